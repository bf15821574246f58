"""The inference job kind: prompts run through a checkpoint or a pretrained model."""
import engine
import engine.training.checkpoint as engine_checkpoint
from engine.interop import pretrained as engine_pretrained
from explorer.jobs.kinds import Plan
from explorer.jobs.models import Job


def _model_config(spec):
    """The source checkpoint's model config; a pretrained decoder's shape; None for the pretrained
    encoder."""
    from explorer.training.checkpoints import checkpoint_path

    source = spec["source"]
    if "job" not in source:
        if source.get("family") != "decoder":
            return None
        from engine.interop.pretrained import pretrained_config
        from explorer.inference.jobs import PRETRAINED, uploaded_model

        uploaded = uploaded_model(source["pretrained"])
        if uploaded is not None:
            return engine.ModelConfig.from_dict(uploaded.config)
        if source["pretrained"] not in PRETRAINED:  # an uploaded model deleted since: its run will say so
            return None
        return pretrained_config(PRETRAINED[source["pretrained"]][0])
    return engine_checkpoint.read_checkpoint(checkpoint_path(Job(pk=source["job"]), source["step"])).model_config


def _memory_bytes(spec, cfg):
    """The analysis' inference memory for the prompts as one batch (weights, KV cache,
    activations), plus one more copy of the weights per quantisation measured. The bundled
    pretrained MiniLM (22 M parameters) counts as 0: every worker holds it. A pretrained decoder's
    sequences are counted as long as they get (``context_tokens``: the longest prompt and the new
    tokens), not its whole 8192-token context."""
    if cfg is None:
        return 0
    memory = engine.analyze(cfg, batch_size=max(1, len(spec["prompts"])),
                            seq_len=spec.get("context_tokens"))["memory"]
    return memory["inference"]["total"] + memory["weights"] * len(spec.get("quantization") or [])


class Inference:
    name = "inference"
    label = "Inference"
    task = "explorer.tasks.run_inference"
    fit_field = "prompts"
    fit_what = "inference memory"
    fit_advice = "use fewer prompts or a smaller model"
    out_of_memory_advice = "Use fewer or shorter prompts, or fewer new tokens, and submit again."
    default_seconds = 15.0
    resumable = False

    def plan(self, user, team, payload):
        from explorer.inference import jobs

        spec = jobs.validate(team, payload)
        cfg = _model_config(spec)
        return Plan(spec={"inference": spec}, queue="cpu", memory_bytes=_memory_bytes(spec, cfg),
                    params=engine.analyze(cfg)["params"]["total"] if cfg is not None else 0, total_steps=100,
                    name=f"Inference · {spec['source']['name']}")

    def memory_bytes(self, job):
        spec = job.spec["inference"]
        return _memory_bytes(spec, _model_config(spec))

    def run(self, job_id, worker_name):
        from explorer.inference import jobs

        return jobs.run_inference_job(job_id, worker_name)

    def page(self, request, job):
        from explorer.inference import views

        return views.page(request, job)


class Chat:
    """One assistant turn of a conversation with a pretrained chat model (``explorer.inference.chat``)."""

    name = "chat"
    label = "Chat"
    task = "explorer.tasks.run_inference"
    fit_field = "content"
    fit_what = "chat memory"
    fit_advice = "start a new, shorter conversation or ask for fewer new tokens"
    out_of_memory_advice = "Start a new, shorter conversation or ask for fewer new tokens, and send again."
    default_seconds = 10.0
    resumable = False
    private = True  # a conversation is its owner's: the team's other members do not see its jobs

    def plan(self, user, team, payload):
        from explorer.inference import chat

        spec = chat.validate(user, payload)
        return Plan(spec={"chat": spec}, queue="cpu", memory_bytes=chat.memory_bytes(spec),
                    params=engine_pretrained.PRETRAINED[chat.engine_name(spec["model"])].parameters,
                    total_steps=100, name=f"Chat · {engine_pretrained.PRETRAINED[chat.engine_name(spec['model'])].title}")

    def memory_bytes(self, job):
        from explorer.inference import chat

        return chat.memory_bytes(job.spec["chat"])

    def run(self, job_id, worker_name):
        from explorer.inference import chat

        return chat.run_chat_job(job_id, worker_name)

    def page(self, request, job):
        from explorer.inference import views

        return views.chat_job_page(request, job)


class Attention:
    """A pretrained decoder's attention on one text: every layer × head (explorer.inference.attention)."""

    name = "attention"
    label = "Attention"
    task = "explorer.tasks.run_inference"
    fit_field = "text"
    fit_what = "memory for the forward and the kept queries and keys"
    fit_advice = "analyse a shorter text"
    out_of_memory_advice = "Analyse a shorter text and submit again."
    default_seconds = 40.0
    resumable = False

    def plan(self, user, team, payload):
        from explorer.inference import attention

        spec, cfg = attention.validate(team, payload)
        return Plan(spec={"attention": spec}, queue="cpu", memory_bytes=attention.memory_bytes(spec, cfg),
                    params=engine.analyze(cfg)["params"]["total"], total_steps=100,
                    name=f"Attention · {spec['n_tokens']:,} tokens · {spec['source']['name'].split(' (')[0]}")

    def memory_bytes(self, job):
        from engine.interop.pretrained import pretrained_config
        from explorer.inference import attention
        from explorer.inference.jobs import PRETRAINED

        spec = job.spec["attention"]
        return attention.memory_bytes(spec, pretrained_config(PRETRAINED[spec["source"]["pretrained"]][0]))

    def run(self, job_id, worker_name):
        from explorer.inference import attention

        return attention.run_job(job_id, worker_name)

    def page(self, request, job):
        from explorer.inference import views

        return views.attention_page(request, job)
