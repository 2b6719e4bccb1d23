"""Time the LM head's log-prob sum alone (forward and backward) on this machine's device: XLA's
chunks against the Pallas head kernels over a sweep of their tiles and Triton launch options.

  python bench/lm_head_sweep.py                                   # Qwen2.5-0.5B's head, one GPU
  python bench/lm_head_sweep.py --tiles=128x128x64,64x128x64,128x256x64 --warps=4,8 \
      --stages=3,4 --json=$OUT/head.jsonl
  python bench/lm_head_sweep.py --smoke                           # tiny, any machine (CI)
  python bench/train_step.py --cases=qwen2.5-0.5b:haf:1024$(python bench/lm_head_sweep.py \
      --print-best=$OUT/head.jsonl)              # the whole step with the sweep's fastest kernels

A case of the whole training step takes ~28 s of a GPU call at 0.5B (bench/train_step.py: a
fresh process, params, compile, warm-up, steps; bench/RESULTS.md round 12); the head alone
compiles and runs in a few seconds, so one short device call can try many tiles.

Each row is one jitted `value_and_grad` of a variant (bench/lm_head_variants.py) on the bench's
batch (16 sequences x 1,024 positions, the second half response):
- ms: median wall time of a call, the device synchronised after each;
- head TFLOP/s: bench/lm_head_variants.py's `head_model_flops` (3 matmuls of 2 * rows * vocab *
  hidden over the scored rows; the backward's recompute not counted) over that time;
- rel err: the largest difference from the first variant's value and gradients (XLA's chunks
  unless left out), over that quantity's largest magnitude: the kernels checked on the device
  they ran on (d_hidden is bf16: one rounding step of it is ~2e-3 of the largest);
- peak GiB: the compiled program's own peak (arguments, outputs and temporaries).
A configuration Triton cannot compile (a tile too large for shared memory, say) is an error
row; the others go on.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from bench.lm_head_variants import (VARIANTS, head_batch, head_model_flops,  # noqa: E402
                                    value_and_grad)
from bench.sweep import (fastest_agreeing, parse_sweep_args, relative_error,  # noqa: E402
                         run_sweep)
from bench.train_step import median_seconds  # noqa: E402
from hafrm_jax.model.config import PRESETS  # noqa: E402
from hafrm_jax.model.head_kernel import HeadBlocks  # noqa: E402

SMOKE = ["--shape=tiny", "--sequences=2", "--seq=32", "--chunk=8", "--tiles=16x16x16,32x32x16",
         "--warps=auto,4", "--iters=2"]


@dataclasses.dataclass(frozen=True)
class Config:
    variant: str
    blocks: HeadBlocks | None = None  # the kernels' tile and launch options

    def describe(self) -> dict:
        blocks = self.blocks
        return {"variant": self.variant, "tile": blocks.tile if blocks else "",
                "warps": blocks.num_warps if blocks else "", "stages": blocks.stages if blocks
                else ""}


def sweep_configs(variants: list[str], tiles: list[str], warps: list[str],
                  stages: list[int]) -> list[Config]:
    """Each variant once, the kernels once per tile x warps x stages ("auto" warps: HeadBlocks'
    rule), each configuration once however it was written. Raises ValueError on an unknown
    variant or a tile Triton cannot take."""
    configs = []
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; variants: {', '.join(VARIANTS)}")
        if variant != "kernels":
            configs.append(Config(variant))
            continue
        for tile, warp, stage in itertools.product(tiles, warps, stages):
            blocks = HeadBlocks.from_tile(tile, warps=None if warp == "auto" else int(warp),
                                          stages=stage)
            config = Config(variant, dataclasses.replace(blocks, warps=blocks.num_warps))
            if config not in configs:
                configs.append(config)
    return configs


def time_config(config: Config, inputs, chunk: int, iters: int, flops: float,
                reference=None) -> tuple[dict, object]:
    """One row of the table, and the variant's value and gradients."""
    grad = value_and_grad(config.variant, chunk, config.blocks)
    start = time.perf_counter()
    compiled = grad.lower(*inputs).compile()
    compile_s = time.perf_counter() - start
    result = jax.block_until_ready(compiled(*inputs))  # warm-up
    seconds = median_seconds(lambda: compiled(*inputs), iters)
    memory = compiled.memory_analysis()
    peak = getattr(memory, "peak_memory_in_bytes", 0) if memory is not None else 0
    row = {**config.describe(), "compile_s": compile_s, "ms": seconds * 1e3,
           "tflops": flops / seconds / 1e12,
           "rel_err": None if reference is None else relative_error(result, reference),
           "peak_gib": peak / 2**30 if peak else None}
    return row, result


def best_kernel_options(rows: list[dict]) -> str:
    """bench/train_step.py's case options of the fastest kernels row that ran and agreed with
    the reference ("+head=pallas+tile=...+warps=...+stages=..."), or "" where none did."""
    best = fastest_agreeing(rows, "kernels")
    if best is None:
        return ""
    return f"+head=pallas+tile={best['tile']}+warps={best['warps']}+stages={best['stages']}"


def format_table(rows: list[dict]) -> str:
    lines = ["| variant | tile | warps | stages | compile s | ms | head TFLOP/s | rel err | "
             "peak GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['variant']} | {row['tile']} | {row['warps']} | "
                         f"{row['stages']} | error: {row['error']} | | | | |")
            continue
        rel_err = "" if row["rel_err"] is None else f"{row['rel_err']:.1e}"
        peak = "" if row["peak_gib"] is None else f"{row['peak_gib']:.2f}"
        lines.append(f"| {row['variant']} | {row['tile']} | {row['warps']} | {row['stages']} | "
                     f"{row['compile_s']:.1f} | {row['ms']:.2f} | {row['tflops']:.1f} | "
                     f"{rel_err} | {peak} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(PRESETS))
    parser.add_argument("--variants", default="chunked,kernels",
                        help=f"comma-separated, of {', '.join(VARIANTS)}; the first is the "
                        "reference of rel err")
    parser.add_argument("--tiles", default=HeadBlocks().tile,
                        help="the kernels' tiles, rows x vocab x depth, comma-separated")
    parser.add_argument("--warps", default="auto", help="Triton warps, comma-separated; auto: "
                        "HeadBlocks' rule (8 for tiles of 128 x 128 or more, else 4)")
    parser.add_argument("--stages", default=str(HeadBlocks().stages),
                        help="Triton pipelining stages, comma-separated")
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--iters", type=int, default=10)
    args = parse_sweep_args(parser, argv, SMOKE, best_kernel_options)
    if args is None:  # --print-best
        return []
    try:
        configs = sweep_configs(args.variants.split(","), args.tiles.split(","),
                                args.warps.split(","), [int(s) for s in args.stages.split(",")])
    except ValueError as e:
        parser.error(str(e))
    cfg = PRESETS[args.shape]
    inputs = head_batch(args.sequences, args.seq, cfg.hidden_size, cfg.vocab_size)
    flops = head_model_flops(args.sequences, args.seq, cfg.hidden_size, cfg.vocab_size)
    device = jax.devices()[0]
    print(f"# {args.shape} LM head (tied, vocab {cfg.vocab_size}, hidden {cfg.hidden_size}), "
          f"{args.sequences} x {args.seq}, chunk {args.chunk}, on {device.device_kind} "
          f"(jax {jax.__version__})", flush=True)
    rows = run_sweep(
        configs, lambda config, reference: time_config(config, inputs, args.chunk, args.iters,
                                                       flops, reference),
        budget_s=args.budget_s, json_path=args.json,
        common=dict(shape=args.shape, sequences=args.sequences, seq=args.seq, chunk=args.chunk,
                    device=device.device_kind, jax=jax.__version__))
    print(format_table(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
