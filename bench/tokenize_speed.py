"""Tokenisation speed: preference pairs a second through the library's `tokenize_pairs`.

Texts are encoded `ENCODE_CHUNK` items a tokenizer call, so that a fast tokenizer encodes each
batch on all of its threads; `--chunks=1` is one call a text (the library before that change),
for comparison in the same run. Every host of a multi-host run tokenises the whole training
split, so this is start-up time on each of them (and again on every resume).

  python bench/tokenize_speed.py             # ../shared/data's 1,800 HH pairs, SmolLM2's tokenizer
  python bench/tokenize_speed.py --repeat=4 --chat-format=hh
  RAYON_NUM_THREADS=1 python bench/tokenize_speed.py   # the tokenizer on one thread
  python bench/tokenize_speed.py --smoke     # the synthetic task's pairs and tokenizer (CI)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.smollm2_hh import SHARED_SAMPLE  # noqa: E402
from hafrm_jax.data import synthetic, tokenize  # noqa: E402
from hafrm_jax.data.readers import read_preference_file  # noqa: E402


def load_inputs(args: argparse.Namespace) -> tuple[list, object]:
    """(pairs, tokenizer) for the run: the synthetic task's (--smoke), or a file's pairs with a
    pretrained checkpoint's tokenizer."""
    if args.smoke:
        return synthetic.generate_splits(200, 1, 1, 0)["train"], synthetic.build_tokenizer()
    from hafrm_jax.hf.checkpoint import resolve_checkpoint
    from hafrm_jax.hf.tokenizer import load_tokenizer

    pairs = read_preference_file(args.data, args.format, on_error="skip").pairs
    return pairs, load_tokenizer(resolve_checkpoint(args.tokenizer))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=SHARED_SAMPLE, help="a preference file")
    parser.add_argument("--format", default="hh_rlhf", help="its reader (data.source)")
    parser.add_argument("--tokenizer", default="smollm2-135m-instruct",
                        help="model.name_or_path whose tokenizer to use (local, or known GGUF)")
    parser.add_argument("--chat-format", default="auto", choices=tokenize.CHAT_FORMATS)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-prompt-length", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=1, help="copies of the pairs, in order")
    parser.add_argument("--chunks", default=f"1,{tokenize.ENCODE_CHUNK}",
                        help="ENCODE_CHUNK values to time, comma-separated; the first is the "
                        "reference of the speed-up")
    parser.add_argument("--iters", type=int, default=5, help="timed runs of each (median)")
    parser.add_argument("--smoke", action="store_true", help="synthetic data, 2 runs")
    args = parser.parse_args(argv)
    pairs, tokenizer = load_inputs(args)
    pairs = pairs * args.repeat
    iters = 2 if args.smoke else args.iters
    threads = os.environ.get("RAYON_NUM_THREADS", f"all ({os.cpu_count()} CPUs)")
    print(f"# {len(pairs):,} pairs, {args.max_length} / {args.max_prompt_length} tokens, "
          f"chat format {args.chat_format}, tokenizer threads {threads}; median of {iters}")
    rows, default_chunk = [], tokenize.ENCODE_CHUNK
    try:
        for chunk in (int(c) for c in args.chunks.split(",")):
            tokenize.ENCODE_CHUNK = chunk
            seconds = []
            for _ in range(iters):
                start = time.perf_counter()
                data, _ = tokenize.tokenize_pairs(pairs, tokenizer, args.max_length,
                                                  args.max_prompt_length, args.chat_format)
                seconds.append(time.perf_counter() - start)
            median = statistics.median(seconds)
            rows.append(dict(chunk=chunk, pairs=len(pairs), seconds=median,
                             pairs_per_s=len(pairs) / median,
                             tokens_per_s=data.num_tokens() / median,
                             tokens=data.num_tokens()))
    finally:
        tokenize.ENCODE_CHUNK = default_chunk
    print("| items a call | seconds | pairs/s | tokens/s | speed-up |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['chunk']} | {row['seconds']:.3f} | {row['pairs_per_s']:,.0f} | "
              f"{row['tokens_per_s']:,.0f} | {rows[0]['seconds'] / row['seconds']:.2f}x |")
    return rows


if __name__ == "__main__":
    main()
