"""A 50-step LoRA SFT of SmolLM2-135M-Instruct on the built-in instruction set, as a job runs it.

    python bench/finetune_lora.py [--steps 50] [--threads N] [--no-answers]

``engine.finetune.finetune`` with the job's defaults (LoRA r=8, alpha 16, dropout 0.05 on every
projection; batch 4, lr 1e-3, 5 warm-up steps, an evaluation every 10 steps; the three default
prompts answered greedily before and after, 48 new tokens at most). Reports the wall time of the
whole run and of its parts (load, the training steps alone, evaluations, answers, saving), the
losses, the trainable parameters and the answers. The load average and the process's CPU time are
recorded: on this shared 2-core machine other work slows every wall-clock figure. Writes bench/results/finetune_lora.json.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

from common import write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--no-answers", action="store_true")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from engine.finetune.config import parse_finetune
    from engine.finetune.run import finetune
    from engine.interop.pretrained import load_smollm2

    t_all = time.perf_counter()
    t0 = time.perf_counter()
    model, tokenizer = load_smollm2(reuse=False)
    load_s = time.perf_counter() - t0
    spec = parse_finetune({"train": {"steps": args.steps}})
    events = []
    stamps = {}

    def on_event(e):
        events.append(e)
        stamps.setdefault(e["kind"] + ("_" + e["phase"] if e["kind"] == "answers" else ""), time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = finetune(spec, model=model, tokenizer=tokenizer, on_event=on_event, out_dir=out,
                          answers=not args.no_answers)
        run_s = time.perf_counter() - t0
    evals = [e for e in events if e["kind"] == "eval"]
    report = {
        "what": "LoRA SFT of SmolLM2-135M-Instruct on the built-in instruction set (engine.finetune.finetune)",
        "spec": spec.to_dict(),
        "steps": result.steps_done,
        "trainable_parameters": result.trainable,
        "total_parameters": result.total,
        "load_s": round(load_s, 2),
        "run_s": round(run_s, 2),
        "train_steps_s": round(result.seconds, 2),
        "s_per_step": round(result.seconds / max(1, result.steps_done), 3),
        "answers_before_s": round(sum(a["seconds"] for a in result.answers_before), 2),
        "answers_after_s": round(sum(a["seconds"] for a in result.answers_after), 2),
        "wall_s": round(time.perf_counter() - t_all, 2),
        # the process's CPU time (user + system, all threads): what the run costs whatever the
        # neighbours do; on a quiet machine wall ≈ cpu / threads
        "cpu_s": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1),
        "first_loss": result.train_losses[0],
        "last_10_mean_loss": sum(result.train_losses[-10:]) / len(result.train_losses[-10:]),
        "evals": [{k: e[k] for k in ("step", "train_loss", "val_loss")} for e in evals],
        "answers": [{"prompt": b["prompt"], "before": b["answer"], "after": a["answer"]}
                    for b, a in zip(result.answers_before, result.answers_after)],
    }
    print(f"{result.steps_done} steps: {result.seconds:.1f} s of training steps ({report['s_per_step']} s/step), "
          f"{run_s:.1f} s for the whole run, {report['wall_s']} s with the load")
    write("finetune_lora", report)


if __name__ == "__main__":
    main()
