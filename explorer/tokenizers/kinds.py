"""The tokenizer-training job kind: a lab tokenizer whose corpus is too large to train within a
request (``explorer.tokenizers.lab.train`` decides), trained by a worker."""
from explorer.jobs.kinds import Plan

# Estimated training memory per byte of corpus: the trainers (Hugging Face tokenizers,
# SentencePiece) hold the text, its pre-tokenized words with their counts and the pair
# statistics, several times the text's size. A rough figure for the fit gate, not a measurement.
MEMORY_PER_CORPUS_BYTE = 8


class TokenizerTraining:
    name = "tokenizer"
    label = "Tokenizer training"
    task = "explorer.tasks.train_tokenizer"
    fit_field = "corpus"
    fit_what = "tokenizer-training memory"
    fit_advice = "train on a smaller corpus"
    out_of_memory_advice = "Train on a smaller corpus or a smaller vocabulary, and submit again."
    default_seconds = 60.0
    resumable = False

    def plan(self, user, team, prepared):
        """``prepared``: the lab's validated request (``lab.train`` builds the corpus first, to
        decide whether it needs a job at all): its settings, name, corpus spec and size."""
        spec = {**prepared["settings"], "name": prepared["name"], "size_bytes": prepared["size_bytes"],
                **{k: v for k, v in prepared["corpus_spec"].items() if k != "dataset_path"}}
        return Plan(spec={"tokenizer": spec}, queue="cpu", memory_bytes=prepared["size_bytes"] * MEMORY_PER_CORPUS_BYTE,
                    total_steps=100, name=f"Tokenizer {prepared['name']}")

    def memory_bytes(self, job):
        return int(job.spec["tokenizer"].get("size_bytes") or 0) * MEMORY_PER_CORPUS_BYTE

    def run(self, job_id, worker_name):
        from explorer.tokenizers import jobs

        return jobs.run_tokenizer_job(job_id, worker_name)

    def page(self, request, job):
        from explorer.tokenizers import views

        return views.page(request, job)
