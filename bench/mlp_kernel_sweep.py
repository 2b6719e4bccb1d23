"""Time one layer's gated-MLP backward to gate and up on this machine's device: XLA's d_h matmul
plus its elementwise pass, against the MLP kernel (hafrm_jax/model/mlp_kernel.py) over tiles
and Triton launch options.

  python bench/mlp_kernel_sweep.py                     # Qwen2.5-0.5B's MLP, 16 x 1,024 tokens
  python bench/mlp_kernel_sweep.py --tiles=128x128x64,64x128x64,128x256x64 --warps=4,8 \
      --stages=3,4 --json=$OUT/mlp.jsonl
  python bench/mlp_kernel_sweep.py --smoke             # tiny, any machine (CI)
  python bench/train_step.py --cases=qwen2.5-0.5b:haf:1024$(python bench/mlp_kernel_sweep.py \
      --print-best=$OUT/mlp.jsonl)               # the whole step with the sweep's fastest kernel

Rows (each one jitted function of d_out [tokens, hidden], w_down [mlp, hidden] and gate_up
[tokens, 2, mlp], bf16):
- xla: what the decoder's XLA path runs, autodiff of silu(gate) * up @ w_down to gate_up: the
  d_h matmul, then an elementwise pass that reads d_h, gate and up back (the reference of rel
  err);
- matmul: XLA's d_h matmul alone, d_out @ w_down^T: what the kernel's fused pass costs at best;
- kernel: `gate_up_gradients` with the row's tile (rows x mlp x depth), warps and stages.
ms is the median over samples of 20 calls launched back to back (one call is well under a
millisecond, where one synchronisation would weigh); TFLOP/s counts the one matmul (2 * tokens *
mlp * hidden). The whole step with the kernel: bench/train_step.py's `+mlp=pallas`. At an
H200's rates (4.8 TB/s, 620.8 TFLOP/s) the roofline bounds at 0.5B are 0.396 ms (xla) and
0.230 ms (kernel), the matmul's FLOPs (bench/RESULTS.md, round 13).
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
import jax.numpy as jnp  # noqa: E402

from bench.sweep import (fastest_agreeing, parse_sweep_args, relative_error,  # noqa: E402
                         run_sweep)
from bench.train_step import median_seconds  # noqa: E402
from hafrm_jax.model.config import PRESETS  # noqa: E402
from hafrm_jax.model.mlp_kernel import (MlpBlocks, gate_up_gradients,  # noqa: E402
                                        silu_gated)

SMOKE = ["--shape=tiny", "--tokens=64", "--tiles=16x16x16,32x16x16", "--warps=4", "--iters=2",
         "--calls=2"]


def xla_gradients(d_out, w_down, gate_up):
    """The decoder's XLA path: autodiff of the activation and the down projection."""
    _, vjp = jax.vjp(lambda gu: jax.lax.dot_general(
        silu_gated(gu), w_down, (((1,), (0,)), ((), ()))), gate_up)
    return vjp(d_out)[0]


def d_h_matmul(d_out, w_down, gate_up):
    del gate_up
    return jax.lax.dot_general(d_out, w_down, (((1,), (1,)), ((), ())))


@dataclasses.dataclass(frozen=True)
class Config:
    variant: str  # xla | matmul | kernel
    blocks: MlpBlocks | None = None

    def describe(self) -> dict:
        b = self.blocks
        return {"variant": self.variant, "tile": b.tile if b else "",
                "warps": b.warps if b else "", "stages": b.stages if b else ""}

    def function(self):
        if self.variant == "xla":
            return xla_gradients
        if self.variant == "matmul":
            return d_h_matmul
        return lambda *args: gate_up_gradients(*args, self.blocks)


def sweep_configs(tiles: list[str], warps: list[int], stages: list[int]) -> list[Config]:
    """xla, matmul, then the kernel once per tile x warps x stages. Raises ValueError on a tile
    Triton cannot take."""
    configs = [Config("xla"), Config("matmul")]
    for tile, warp, stage in itertools.product(tiles, warps, stages):
        config = Config("kernel", MlpBlocks.from_tile(tile, warps=warp, stages=stage))
        if config not in configs:
            configs.append(config)
    return configs


def layer_inputs(tokens: int, hidden: int, mlp: int, dtype=jnp.bfloat16):
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    return (jax.random.normal(k[0], (tokens, hidden), jnp.float32).astype(dtype),
            (jax.random.normal(k[1], (mlp, hidden), jnp.float32) / hidden ** 0.5).astype(dtype),
            (2 * jax.random.normal(k[2], (tokens, 2, mlp), jnp.float32)).astype(dtype))


def time_config(config: Config, inputs, samples: int, calls: int, flops: float,
                reference=None) -> tuple[dict, object]:
    start = time.perf_counter()
    compiled = jax.jit(config.function()).lower(*inputs).compile()
    compile_s = time.perf_counter() - start
    result = jax.block_until_ready(compiled(*inputs))
    seconds = median_seconds(lambda: compiled(*inputs), samples, calls)
    comparable = reference is not None and result.shape == reference.shape
    return {**config.describe(), "compile_s": compile_s, "ms": seconds * 1e3,
            "tflops": flops / seconds / 1e12,
            "rel_err": relative_error(result, reference) if comparable else None}, result


def best_kernel_options(rows: list[dict]) -> str:
    """bench/train_step.py's case options of the fastest kernel row that ran and agreed with
    XLA's result ("+mlp=pallas+mlptile=...+mlpwarps=...+mlpstages=..."), or "" where none did."""
    best = fastest_agreeing(rows, "kernel")
    if best is None:
        return ""
    return (f"+mlp=pallas+mlptile={best['tile']}+mlpwarps={best['warps']}"
            f"+mlpstages={best['stages']}")


def format_table(rows: list[dict]) -> str:
    lines = ["| variant | tile | warps | stages | compile s | ms | TFLOP/s | rel err |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        head = f"| {row['variant']} | {row['tile']} | {row['warps']} | {row['stages']} |"
        if "error" in row:
            lines.append(f"{head} error: {row['error']} | | | |")
            continue
        rel_err = "" if row["rel_err"] is None else f"{row['rel_err']:.1e}"
        lines.append(f"{head} {row['compile_s']:.1f} | {row['ms']:.3f} | {row['tflops']:.1f} | "
                     f"{rel_err} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(PRESETS))
    parser.add_argument("--tokens", type=int, default=16 * 1024,
                        help="rows of one layer's MLP: the bench's 8 pairs x 2 x 1,024")
    parser.add_argument("--tiles", default=MlpBlocks().tile,
                        help="the kernel's tiles, rows x mlp x depth, comma-separated")
    parser.add_argument("--warps", default=str(MlpBlocks().warps), help="comma-separated")
    parser.add_argument("--stages", default=str(MlpBlocks().stages), help="comma-separated")
    parser.add_argument("--iters", type=int, default=10, help="samples of the median")
    parser.add_argument("--calls", type=int, default=20, help="calls back to back a sample")
    args = parse_sweep_args(parser, argv, SMOKE, best_kernel_options)
    if args is None:  # --print-best
        return []
    try:
        configs = sweep_configs(args.tiles.split(","), [int(w) for w in args.warps.split(",")],
                                [int(s) for s in args.stages.split(",")])
    except ValueError as e:
        parser.error(str(e))
    cfg = PRESETS[args.shape]
    inputs = layer_inputs(args.tokens, cfg.hidden_size, cfg.intermediate_size)
    flops = 2.0 * args.tokens * cfg.hidden_size * cfg.intermediate_size
    device = jax.devices()[0]
    print(f"# {args.shape} MLP backward to gate and up, one layer: {args.tokens} tokens, hidden "
          f"{cfg.hidden_size}, mlp {cfg.intermediate_size}, on {device.device_kind} "
          f"(jax {jax.__version__})", flush=True)
    rows = run_sweep(
        configs, lambda config, reference: time_config(config, inputs, args.iters, args.calls,
                                                       flops, reference),
        budget_s=args.budget_s, json_path=args.json,
        common=dict(shape=args.shape, tokens=args.tokens, device=device.device_kind,
                    jax=jax.__version__))
    print(format_table(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
