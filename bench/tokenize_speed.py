"""Tokenisation speed: preference pairs a second through the library's `tokenize_pairs`.

Texts are encoded `ENCODE_CHUNK` items a tokenizer call, so that a fast tokenizer encodes each
batch on all of its threads; `--chunks=1` is one call a text (the library before that change),
for comparison in the same run. Every host of a multi-host run tokenises the whole training
split, so this is start-up time on each of them (and again on every resume).

  python bench/tokenize_speed.py             # ../shared/data's 1,800 HH pairs, SmolLM2's tokenizer
  python bench/tokenize_speed.py --repeat=4 --chat-format=hh
  RAYON_NUM_THREADS=1 python bench/tokenize_speed.py   # the tokenizer on one thread
  python bench/tokenize_speed.py --smoke     # the synthetic task's pairs and tokenizer (CI)
  python bench/tokenize_speed.py --cache --repeat=90   # a split read back from data.cache_dir
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.smollm2_hh import SHARED_SAMPLE  # noqa: E402
from hafrm_jax.data import synthetic, token_cache, tokenize  # noqa: E402
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


def time_cache(pairs: list, tokenizer, args: argparse.Namespace, iters: int) -> list[dict]:
    """Median seconds of the three ways `prepare_data` can get a split: tokenising it with no
    cache, tokenising and writing it (the first run on a cache directory), and reading it back
    (every later run). Both cached ways include hashing the pairs and the tokenizer for the
    file's name. Each iteration starts from an empty directory."""
    settings = token_cache.TokenizeSettings(args.max_length, args.max_prompt_length,
                                            args.chat_format)
    indices = np.arange(len(pairs))
    seconds: dict[str, list[float]] = {"tokenise, no cache": [], "tokenise and write": [],
                                       "read back": []}
    for _ in range(iters):
        with tempfile.TemporaryDirectory() as directory:
            for way, cache in zip(seconds, (None, directory, directory)):
                start = time.perf_counter()
                data, _ = token_cache.tokenize_cached(pairs, tokenizer, settings, indices,
                                                      cache, "train")
                seconds[way].append(time.perf_counter() - start)
            (name,) = os.listdir(directory)
            file_mb = os.path.getsize(os.path.join(directory, name)) / 2**20
    rows = [dict(way=way, pairs=len(pairs), seconds=statistics.median(times),
                 tokens=data.num_tokens(), file_mb=file_mb, dense_mb=data.tokens.nbytes / 2**20)
            for way, times in seconds.items()]
    print(f"# the file: {file_mb:.1f} MiB (real tokens only; the padded arrays "
          f"{rows[0]['dense_mb']:.1f} MiB)")
    print("| way | seconds | pairs/s | against tokenising |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['way']} | {row['seconds']:.3f} | {row['pairs'] / row['seconds']:,.0f} | "
              f"{rows[0]['seconds'] / row['seconds']:.2f}x |")
    return rows


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
    parser.add_argument("--cache", action="store_true",
                        help="time a split tokenised, tokenised and written to a cache "
                        "directory, and read back (data.cache_dir), instead of chunk sizes")
    parser.add_argument("--smoke", action="store_true", help="synthetic data, 2 runs")
    args = parser.parse_args(argv)
    pairs, tokenizer = load_inputs(args)
    pairs = pairs * args.repeat
    iters = 2 if args.smoke else args.iters
    threads = os.environ.get("RAYON_NUM_THREADS", f"all ({os.cpu_count()} CPUs)")
    print(f"# {len(pairs):,} pairs, {args.max_length} / {args.max_prompt_length} tokens, "
          f"chat format {args.chat_format}, tokenizer threads {threads}; median of {iters}")
    if args.cache:
        return time_cache(pairs, tokenizer, args, iters)
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
