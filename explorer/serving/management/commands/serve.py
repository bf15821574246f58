import logging

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = ("Serve a pretrained decoder (e.g. smollm2-135m-instruct) behind the OpenAI-compatible API "
            "(/v1/chat/completions, /v1/completions, /v1/models), with continuous batching and a paged KV cache")

    def add_arguments(self, parser):
        parser.add_argument("model", nargs="?", help="a pretrained registry name (e.g. smollm2-135m-instruct)")
        parser.add_argument("--job", type=int, help="serve this training job's checkpoint instead, as model 'job-<id>' "
                                                    "(only its team's members see it)")
        parser.add_argument("--step", type=int, help="with --job: the checkpoint's step (default: the latest)")
        parser.add_argument("--max-batch", type=int, help="sequences decoded together (SERVING_MAX_BATCH)")
        parser.add_argument("--kv-mib", type=int, help="memory for the KV cache's blocks (SERVING_KV_MB)")
        parser.add_argument("--policy", choices=["continuous", "static"], default="continuous",
                            help="static: a new batch starts only when the last one has finished (for comparison)")
        parser.add_argument("--name", help="the name it registers under on the Workers page")

    def handle(self, *args, **options):
        from explorer.serving.server import serve

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if bool(options["model"]) == bool(options["job"]):
            raise CommandError("name a pretrained model or --job <id>, one of the two")
        serve(options["model"], job=options["job"], step=options["step"], name=options["name"], max_batch=options["max_batch"],
              kv_bytes=options["kv_mib"] * 2**20 if options["kv_mib"] else None, policy=options["policy"])
