"""nanoGPT's CPU recipe for character-level Shakespeare, trained by our engine.

    python bench/nanogpt_shakespeare.py [--path /work/shared/data/tinyshakespeare.txt] [--steps 2000]

nanoGPT's README trains ``config/train_shakespeare_char.py`` on a CPU with

    --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12
    --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

and reports a validation loss of about 1.88 after those 2000 iterations. The same run here:
4 layers, 4 heads, width 128, context 64, batch 12, no biases (nanoGPT's default), lr 1e-3
with 100 warm-up steps and cosine decay to 1e-4 at step 2000, weight decay 0.1, clip 1.0,
evaluation every 250 steps on 20 batches, data through our "text" source and char tokenizer
(first 90% train, last 10% validation, as nanoGPT's prepare.py splits it).

AdamW's betas are the shakespeare_char config's (0.9, 0.99; our default beta2 is 0.95). One
difference remains: nanoGPT draws fresh random evaluation batches each time, we keep fixed ones.
Writes bench/results/nanogpt_shakespeare.json: tokens/s (optimizer steps only) and the losses.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch  # noqa: E402
from common import ROOT, write

from engine import parse_spec, train  # noqa: E402

DEFAULT_PATH = str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")
NANOGPT_VAL_LOSS = 1.88  # nanoGPT README, "I only get up to about ~1.88" (CPU run, 2000 iterations)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default=DEFAULT_PATH, help="tinyshakespeare text (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.path == DEFAULT_PATH and not Path(args.path).is_file():
        # the default is this workplace's copy; elsewhere, `make bench` goes on without it
        print(f"skipped: no {args.path}; get tinyshakespeare (nanoGPT's data/shakespeare_char) and pass --path")
        return 0

    spec = parse_spec({
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0, "bias": False},
        "data": {"source": "text", "path": args.path, "tokenizer": "char", "val_fraction": 0.1},
        "train": {"steps": args.steps, "batch_size": 12, "lr": 1e-3, "min_lr_ratio": 0.1,
                  "warmup_steps": min(100, args.steps), "weight_decay": 0.1, "grad_clip": 1.0,
                  "eval_interval": 250, "eval_iters": 20, "log_interval": 1, "seed": 1337, "device": "cpu",
                  "sample_tokens": 0, "beta1": 0.9, "beta2": 0.99},  # shakespeare_char's betas
    })
    stamps, evals = [], []

    def on_event(e):
        if e["kind"] == "step":
            stamps.append((e["step"], time.perf_counter()))
        elif e["kind"] == "eval":
            evals.append({"step": e["step"], "train_loss": e["train_loss"], "val_loss": e["val_loss"]})
            print(f"step {e['step']:5d}  train {e['train_loss']:.4f}  val {e['val_loss']:.4f}", flush=True)

    t0 = time.perf_counter()
    result = train(spec, on_event=on_event)
    wall = time.perf_counter() - t0
    # step time = gaps between consecutive step events, leaving out the first 10 steps (warm-up)
    # and every gap that holds an evaluation
    eval_steps = {e["step"] for e in evals}
    gaps = [t - t_prev for (s_prev, t_prev), (s, t) in zip(stamps, stamps[1:], strict=False)
            if s_prev > 10 and s_prev not in eval_steps]
    tokens_per_step = spec.train.batch_size * spec.model.block_size
    tokens_per_s = tokens_per_step * len(gaps) / sum(gaps)
    final = evals[-1]
    write("nanogpt_shakespeare", {
        "what": "nanoGPT shakespeare_char CPU recipe (4L/4H/128, ctx 64, batch 12) trained by engine.train",
        "spec": spec.to_dict(),
        "params": result.model.num_params(),
        "steps": result.steps_done,
        "tokens_per_s": round(tokens_per_s, 1),
        "ms_per_step": round(1000 * sum(gaps) / len(gaps), 2),
        "wall_s": round(wall, 1),
        "final_train_loss": final["train_loss"],
        "final_val_loss": final["val_loss"],
        "nanogpt_reported_val_loss": NANOGPT_VAL_LOSS,
        "evals": evals,
        "differences_from_nanogpt": ["fixed evaluation batches instead of fresh random ones"],
    })
    print(f"{result.model.num_params():,} params, {result.steps_done} steps in {wall:.0f} s: "
          f"{tokens_per_s:,.0f} tokens/s; val loss {final['val_loss']:.4f} (nanoGPT reports ~{NANOGPT_VAL_LOSS})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
