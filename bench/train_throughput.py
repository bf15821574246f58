"""Training throughput of one named config, written to bench/results/train_throughput.json.

    python bench/train_throughput.py [--steps 100] [--device cpu]

Times optimizer steps only: the first WARMUP steps (allocator and kernel warm-up) and the
single evaluation at the end are left out.
"""

from __future__ import annotations

import argparse

from common import write

from engine import parse_spec, train  # noqa: E402

NAME = "decoder 4L/4H/128d, block 64, batch 32, char tokenizer on the stdlib corpus"
SPEC = {
    "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64},
    "data": {"source": "stdlib", "tokenizer": "char"},
    "train": {"batch_size": 32, "warmup_steps": 10, "eval_iters": 1, "sample_tokens": 1},
}
WARMUP = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    args = parser.parse_args()

    spec = dict(SPEC, train=dict(SPEC["train"], steps=args.steps, eval_interval=args.steps, device=args.device))
    spec = parse_spec(spec)
    steps = []
    result = train(spec, on_event=lambda e: steps.append(e) if e["kind"] == "step" else None)

    first, last = steps[WARMUP - 1], steps[-1]
    ms_per_step = 1000 * (last["elapsed"] - first["elapsed"]) / (last["step"] - first["step"])
    tokens_per_step = spec.train.batch_size * spec.model.block_size
    report = {
        "name": NAME,
        "spec": spec.to_dict(),
        "steps": args.steps,
        "timed_steps": last["step"] - first["step"],
        "tokens_per_s": round(tokens_per_step / (ms_per_step / 1000), 1),
        "ms_per_step": round(ms_per_step, 2),
        "params": result.model.num_params(),
        "final_loss": round(result.train_losses[-1], 4),
        "device": str(next(result.model.parameters()).device),
    }
    print(f"{NAME}: {report['params']:,} params on {report['device']}")
    print(f"{report['tokens_per_s']:,.0f} tokens/s, {report['ms_per_step']:.1f} ms/step over {report['timed_steps']} steps")
    write("train_throughput", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
