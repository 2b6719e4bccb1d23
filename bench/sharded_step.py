"""The training step on several meshes of fake CPU devices: time, per-device temporary memory
and bytes moved by collectives, so that a sharding change can be checked without a pod.

  python bench/sharded_step.py                       # 8 devices: 8x1x1, 1x8x1, 2x2x2, 1x4x2
  python bench/sharded_step.py --meshes=1x8x1 --no-rules   # as traced before round 7's fix

The step is the training loop's: the library's `train_step`, jitted with the state's and the
batch's shardings and traced under the logical-axis rules. `--no-rules` traces it without
them, which is how every step was traced until bench/RESULTS.md round 7 (flax then drops the
model's activation constraints). On a CPU the devices share the cores, so compare times
between meshes of one run, not with a real pod; the memory and collective bytes are what the
compiler planned for each device.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BYTES_PER_ELEMENT = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s8": 1,
                     "u8": 1, "pred": 1}
_COLLECTIVE = re.compile(r"= \(?([^=]*?)\)? (all-gather|all-reduce|reduce-scatter|all-to-all|"
                         r"collective-permute)(?:-start)?\(")


def collective_bytes(hlo_text: str) -> int:
    """Bytes of the results of every collective in a compiled CPU program (synchronous
    collectives; an async start's tuple would count its operand too). Each is counted once: a
    collective inside a loop body counts once, not per iteration."""
    import numpy as np

    total = 0
    for match in _COLLECTIVE.finditer(hlo_text):
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", match.group(1)):
            size = int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
            total += BYTES_PER_ELEMENT.get(dtype, 4) * size
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meshes", default="8x1x1,1x8x1,2x2x2,1x4x2",
                        help="data x fsdp x tensor, comma-separated (one device count)")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--remat", default="dots")
    parser.add_argument("--no-rules", action="store_true",
                        help="trace without the logical-axis rules (the layout before the fix)")
    args = parser.parse_args()
    meshes = [tuple(int(n) for n in m.split("x")) for m in args.meshes.split(",")]
    devices = {a * b * c for a, b, c in meshes}
    if len(devices) != 1:
        raise SystemExit(f"--meshes must all have one device count, got {sorted(devices)}")
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                               f"--xla_force_host_platform_device_count={devices.pop()}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax

    from bench.train_step import bench_batch, bench_optimizer
    from hafrm_jax.model.config import preset
    from hafrm_jax.objective import LossConfig, ObjectiveConfig
    from hafrm_jax.sharding import (DEFAULT_RULES, batch_sharding, make_mesh, replicated,
                                    traced_under_rules)
    from hafrm_jax.train.state import create_train_state, init_params
    from hafrm_jax.train.step import train_step

    # A small Llama-like shape, big enough that activations and weights both matter.
    cfg = preset("tiny", vocab_size=4096, hidden_size=256, intermediate_size=704, num_layers=4,
                 num_heads=8, num_kv_heads=2, remat=args.remat, logprob_chunk=64)
    loss_config = LossConfig(cfg, ObjectiveConfig("haf", alpha=0.2, beta=0.1))
    print(f"# {jax.device_count()} CPU devices, jax {jax.__version__}; {args.pairs} pairs x 2 x "
          f"{args.seq} tokens, 4 layers x 256 wide, float32, remat {args.remat}, HaF; "
          f"{'WITHOUT' if args.no_rules else 'with'} the logical-axis rules while tracing")
    print("| mesh (data x fsdp x tensor) | step s | temp MiB / device | collective MiB | loss |")
    print("|---|---|---|---|---|")
    for shape in meshes:
        mesh = make_mesh(*shape)
        optimizer, schedule = bench_optimizer(args.steps + 2)
        params, params_sh = init_params(cfg, 0, mesh, DEFAULT_RULES)
        state, state_sh = create_train_state(params, params_sh, optimizer, 0, mesh)
        on_data = batch_sharding(mesh, DEFAULT_RULES)
        batch = jax.device_put(bench_batch(cfg, args.pairs, args.seq), on_data)

        def step(state, batch):
            return train_step(state, batch, None, None, loss_config=loss_config,
                              optimizer=optimizer, schedule=schedule, grad_accum_steps=1)

        if not args.no_rules:
            step = traced_under_rules(step, DEFAULT_RULES)
        jitted = jax.jit(step, in_shardings=(state_sh, on_data),
                         out_shardings=(state_sh, replicated(mesh)), donate_argnums=0)
        with jax.set_mesh(mesh):
            compiled = jitted.lower(state, batch).compile()
            for _ in range(2):  # warm-up
                state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            start = time.perf_counter()
            for _ in range(args.steps):
                state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
        step_s = (time.perf_counter() - start) / args.steps
        temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
        moved = collective_bytes(compiled.as_text()) / 2**20
        print(f"| {'x'.join(map(str, shape))} | {step_s:.3f} | {temp:.1f} | {moved:.1f} | "
              f"{float(metrics['loss/total']):.6f} |", flush=True)


if __name__ == "__main__":
    main()
