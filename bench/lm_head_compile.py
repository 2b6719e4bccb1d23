"""The LM head's log-prob sum alone (forward and backward), compiled for an H100 on this machine:
where HaF's cost over the plain reward model lies, and what a change to it could save.

  JAX_PLATFORMS=cpu python bench/lm_head_compile.py                  # Qwen2.5-0.5B's head
  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_gpu_experimental_gemm_fusion_v2=true \
      python bench/lm_head_compile.py --variants=stored               # under a compiler flag

Variants (bench/lm_head_variants.py), on the bench's batch (16 sequences x 1,024 positions,
the second half response): chunked (the library's, XLA's kernels), kernels (the library's with
its Pallas head kernels; `--tile` sets their tile), stored (float32 logits kept, nothing
recomputed), chunked_stored (the library's chunks, their logits kept). bench/lm_head_sweep.py
times them on a GPU.

Needs the CUDA plugin, as bench/gpu_compile.py (whose H100 description and roofline it uses).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from bench.gpu_compile import H100_TARGET, gpu_mesh  # noqa: E402
from bench.hlo_roofline import (add_roofline_options, bound_seconds,  # noqa: E402
                                format_roofline, program_kernels)
from bench.lm_head_variants import head_batch, value_and_grad  # noqa: E402
from hafrm_jax.model.config import PRESETS  # noqa: E402
from hafrm_jax.model.head_kernel import HeadBlocks  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(PRESETS))
    parser.add_argument("--variants", default="chunked,kernels,stored")
    parser.add_argument("--tile", default=HeadBlocks().tile,
                        help="the kernels' tile, rows x vocab x depth")
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--top", type=int, default=8)
    add_roofline_options(parser)
    args = parser.parse_args()
    cfg = PRESETS[args.shape]
    mesh = gpu_mesh(H100_TARGET)
    replicated = NamedSharding(mesh, PartitionSpec())

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)

    inputs = [spec(x.shape, x.dtype) for x in jax.eval_shape(functools.partial(
        head_batch, args.sequences, args.seq, cfg.hidden_size, cfg.vocab_size))]
    trips = -(-(args.seq - args.seq // 2) // args.chunk)  # chunks holding a response token
    bandwidth, peak = args.bandwidth_tb_s * 1e12, args.peak_tflops * 1e12
    rows = []
    tile = HeadBlocks.from_tile(args.tile)
    for name in args.variants.split(","):
        grad = value_and_grad(name, args.chunk, tile if name == "kernels" else None)
        with jax.set_mesh(mesh):  # the Triton kernels compile for the mesh's (abstract) GPU
            compiled = grad.lower(*inputs).compile()
        kernels = program_kernels(compiled.as_text(), unknown_trips=trips)
        peak_gib = compiled.memory_analysis().peak_memory_in_bytes / 2**30
        bound = bound_seconds(kernels, bandwidth, peak)
        rows.append((name, peak_gib, bound))
        print(f"# {name}: predicted peak {peak_gib:.2f} GiB\n"
              + format_roofline(kernels, bandwidth, peak, args.top) + "\n", flush=True)
    print(f"# {args.shape} LM head, {args.sequences} x {args.seq}, H100 (compiled here, not run)"
          + (f", XLA_FLAGS={os.environ['XLA_FLAGS']}" if os.environ.get("XLA_FLAGS") else ""))
    print("| variant | predicted peak GiB | roofline bound ms |")
    print("|---|---|---|")
    for name, peak_gib, bound in rows:
        print(f"| {name} | {peak_gib:.2f} | {bound * 1e3:.1f} |")


if __name__ == "__main__":
    main()
