"""How fast the tokenization lab trains and encodes, and how much each kind compresses code.

    python bench/tokenizer_speed.py [--max-bytes 5000000] [--vocab-size 8000] [--kinds bpe,unigram]

For each trainable kind of ``engine.tokenlab.KINDS``: the time ``tokenlab.train`` takes on the
local standard library's source (``corpus_text("stdlib")``, capped at ``--max-bytes``) with
``--vocab-size``; encode throughput in MB/s of UTF-8 over the same corpus, batch-encoded by
lines where the library allows (the way a training job's data would be prepared in bulk:
``encode_batch`` for Hugging Face tokenizers, ``encode(list, num_threads=...)`` for
SentencePiece); the lab's full ``encode`` (with offsets and display strings, what the web page
shows) on a 100 kB slice; and tokens per byte. Writes bench/results/tokenizer_speed.json.
"""

from __future__ import annotations

import argparse
import time

from common import write

from engine import tokenlab  # noqa: E402

TRAINABLE = [k for k in tokenlab.KINDS if k not in ("byte",)]  # byte has nothing to learn


def lines_of(text: str, size: int = 1 << 14) -> list[str]:
    """The corpus in pieces of about ``size`` characters, cut after a newline."""
    out, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-bytes", type=int, default=5_000_000)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--kinds", default=",".join(TRAINABLE + ["byte"]))
    args = parser.parse_args()

    t0 = time.perf_counter()
    text = tokenlab.corpus_text("stdlib", max_bytes=args.max_bytes)
    n_bytes = len(text.encode("utf-8"))
    read_s = time.perf_counter() - t0
    pieces = lines_of(text)
    sample = text[:100_000]
    print(f"stdlib corpus: {n_bytes / 1e6:.2f} MB ({len(text):,} characters) read in {read_s:.1f} s")
    results = {}
    for kind in args.kinds.split(","):
        t0 = time.perf_counter()
        tok = tokenlab.train(kind, text, vocab_size=args.vocab_size)
        train_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        ids = tok.encode_batch_ids(pieces)
        batch_s = time.perf_counter() - t0
        n_tokens = sum(map(len, ids))

        t0 = time.perf_counter()
        enc = tok.encode(sample)
        lab_s = time.perf_counter() - t0
        results[kind] = {
            "vocab_size": tok.vocab_size,
            "train_s": round(train_s, 2),
            "encode_batch_mb_per_s": round(n_bytes / 1e6 / batch_s, 2),
            "lab_encode_mb_per_s": round(len(sample.encode("utf-8")) / 1e6 / lab_s, 2),
            "n_tokens": n_tokens,
            "tokens_per_byte": round(n_tokens / n_bytes, 4),
            "bytes_per_token": round(n_bytes / n_tokens, 3),
            "lab_sample_tokens": len(enc.ids),
        }
        r = results[kind]
        print(f"{kind:>22}: vocab {r['vocab_size']:>5}, trained in {r['train_s']:6.2f} s, "
              f"encode {r['encode_batch_mb_per_s']:6.2f} MB/s (lab encode with offsets {r['lab_encode_mb_per_s']:.2f} "
              f"MB/s), {r['tokens_per_byte']:.3f} tokens/byte ({r['bytes_per_token']:.2f} bytes/token)")
    write("tokenizer_speed", {
        "corpus": "stdlib", "corpus_bytes": n_bytes, "vocab_size": args.vocab_size, "corpus_read_s": round(read_s, 2),
        "kinds": results,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
