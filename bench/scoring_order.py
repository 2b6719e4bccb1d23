"""Scoring passes (the reference pass over train, validation, test, eval.py) in batches of pairs
of similar length, against split order: positions computed, seconds, and the same scores.

`evaluation.score_pairs` pads each batch to its longest pair. In split order that is close to
the longest of a random draw; taken shortest first (`eval_batches(by_length=True)`, the
library's default) a batch pads to about its own pairs' length. Scores go back into split
order by index either way.

  python bench/scoring_order.py                      # 128 HH pairs, SmolLM2-135M (GGUF), 512
  python bench/scoring_order.py --pairs=1794 --positions-only   # the count alone, all pairs
  python bench/scoring_order.py --smoke              # synthetic pairs, a tiny random model (CI)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs.smollm2_hh import SHARED_SAMPLE  # noqa: E402
from hafrm_jax.data import synthetic  # noqa: E402
from hafrm_jax.data.batching import eval_batches  # noqa: E402
from hafrm_jax.data.readers import read_preference_file  # noqa: E402
from hafrm_jax.data.tokenize import tokenize_pairs  # noqa: E402
from hafrm_jax.evaluation import make_score_fn, score_pairs  # noqa: E402
from hafrm_jax.model.config import preset  # noqa: E402
from hafrm_jax.sharding import DEFAULT_RULES, make_mesh  # noqa: E402
from hafrm_jax.train.state import init_params  # noqa: E402


def positions(data, batch_size: int, pad_to_multiple: int, by_length: bool) -> tuple[int, int]:
    """(token positions the passes compute, distinct batch shapes)."""
    shapes = [b["input_ids"].shape for b in eval_batches(data, batch_size, pad_to_multiple,
                                                          by_length=by_length)]
    return sum(int(np.prod(s)) for s in shapes), len(set(shapes))


def load(args: argparse.Namespace):
    """(tokenised pairs, model config, params or None, mesh)."""
    mesh = make_mesh()
    if args.smoke:  # lengths 8-40: enough spread for the order to matter
        tokenizer = synthetic.build_tokenizer()
        pairs = synthetic.generate_pairs(args.pairs, seed=0)
        data, _ = tokenize_pairs(pairs, tokenizer, args.max_length, args.max_prompt_length)
        config = preset("tiny", vocab_size=len(tokenizer))
        return data, config, init_params(config, 0, mesh, DEFAULT_RULES)[0], mesh
    from hafrm_jax.hf.checkpoint import pretrained_model_config, resolve_checkpoint
    from hafrm_jax.hf.tokenizer import load_tokenizer

    directory = resolve_checkpoint(args.model)
    pairs = read_preference_file(args.data, "hh_rlhf", on_error="skip").pairs[:args.pairs]
    data, _ = tokenize_pairs(pairs, load_tokenizer(directory), args.max_length,
                             args.max_prompt_length)
    config = pretrained_model_config(directory)
    params = None if args.positions_only else init_params(config, 0, mesh, DEFAULT_RULES,
                                                          directory)[0]
    return data, config, params, mesh


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=SHARED_SAMPLE, help="an HH-RLHF file")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="a checkpoint (local, or a known GGUF)")
    parser.add_argument("--pairs", type=int, default=128, help="the file's first N pairs")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-prompt-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32, help="pairs a scoring batch "
                        "(configs/_paper.py's train.eval_batch_size)")
    parser.add_argument("--pad-to-multiple", type=int, default=64,
                        help="configs/_paper.py's data.pad_to_multiple")
    parser.add_argument("--positions-only", action="store_true",
                        help="count the positions; load and run no model")
    parser.add_argument("--smoke", action="store_true",
                        help="synthetic pairs and a tiny random model")
    args = parser.parse_args(argv)
    if args.smoke:
        args.pairs, args.max_length, args.max_prompt_length = 40, 48, 24
        args.batch_size, args.pad_to_multiple = 8, 8
    data, config, params, mesh = load(args)
    real = int(data.lengths.sum())
    print(f"# {len(data)} pairs, {real:,} real tokens, {args.max_length} / "
          f"{args.max_prompt_length} tokens, {args.batch_size} pairs a batch, padded to a "
          f"multiple of {args.pad_to_multiple}")
    fn = None if params is None else make_score_fn(config, mesh, DEFAULT_RULES,
                                                   with_rewards=True, with_logprobs=True)
    rows, scores = [], {}
    for by_length in (False, True):
        computed, shapes = positions(data, args.batch_size, args.pad_to_multiple, by_length)
        row = dict(order="by length" if by_length else "split order", positions=computed,
                   real_share=real / computed, shapes=shapes, seconds=None)
        if fn is not None:
            def run():
                return score_pairs(fn, params, data, len(data), args.batch_size,
                                   args.pad_to_multiple, mesh, DEFAULT_RULES,
                                   by_length=by_length)
            run()  # compiles every batch shape
            start = time.perf_counter()
            scores[by_length] = run()
            row["seconds"] = time.perf_counter() - start
        rows.append(row)
    print("| order | positions computed | real tokens of them | batch shapes | seconds | "
          "speed-up |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        seconds = "-" if row["seconds"] is None else f"{row['seconds']:.2f}"
        gain = rows[0]["seconds"] / row["seconds"] if row["seconds"] else \
            rows[0]["positions"] / row["positions"]
        print(f"| {row['order']} | {row['positions']:,} | {100 * row['real_share']:.0f}% | "
              f"{row['shapes']} | {seconds} | {gain:.2f}x |")
    if scores:
        for name in ("rewards", "logps"):
            diff = float(np.max(np.abs(scores[True][name] - scores[False][name])))
            rows[1][f"max_abs_diff_{name}"] = diff
            print(f"# {name}: largest difference between the two orders {diff:.2e}")
        np.testing.assert_array_equal(scores[True]["index"], scores[False]["index"])
    return rows


if __name__ == "__main__":
    main()
