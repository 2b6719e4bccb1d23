"""The LM head's log-prob sum alone (forward and backward), compiled for an H100 on this machine:
where HaF's cost over the plain reward model lies, and what a change to it could save.

  JAX_PLATFORMS=cpu python bench/lm_head_compile.py                  # Qwen2.5-0.5B's head
  JAX_PLATFORMS=cpu XLA_FLAGS=--xla_gpu_experimental_gemm_fusion_v2=true \
      python bench/lm_head_compile.py --variants=stored               # under a compiler flag

Variants, on the bench's batch (16 sequences x 1,024 positions, the second half response):
- chunked: the library's `sequence_logprobs` (chunks of 128 positions, logits recomputed in
  the backward pass, never stored);
- kernels: the library's chunks with its Pallas head kernels (hafrm_jax/model/head_kernel.py,
  Triton: the logits reduced where they are computed, never written; `--tile` sets their tile);
- stored: every response position at once, the float32 logits kept from the forward pass for
  the backward (no recompute; +batch x positions x vocab x 4 bytes of memory). Not in the
  library: the floor of what XLA's kernels do with the head when nothing is recomputed.

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
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from bench.gpu_compile import H100_TARGET, gpu_mesh  # noqa: E402
from bench.hlo_roofline import (add_roofline_options, bound_seconds,  # noqa: E402
                                format_roofline, program_kernels)
from hafrm_jax.model.config import PRESETS  # noqa: E402
from hafrm_jax.model.head_kernel import HeadBlocks  # noqa: E402
from hafrm_jax.model.readout import max_and_sum_exp, sequence_logprobs  # noqa: E402


def chunked(hidden, weight, input_ids, response_mask, chunk, kernel_blocks=None):
    """The library's log-prob sum, summed over the batch (a scalar to differentiate)."""
    return jnp.sum(sequence_logprobs(hidden, weight, input_ids, response_mask, chunk,
                                     vocab_major=True, kernel_blocks=kernel_blocks))


def kernels(hidden, weight, input_ids, response_mask, chunk, kernel_blocks=HeadBlocks()):
    """The library's log-prob sum with its LM-head kernels."""
    return chunked(hidden, weight, input_ids, response_mask, chunk, kernel_blocks)


@jax.custom_vjp
def _stored_logprobs(rows, weight, targets):
    return _stored_forward(rows, weight, targets)[0]


def _stored_forward(rows, weight, targets):
    logits = jnp.einsum("nd,vd->nv", rows, weight.astype(rows.dtype),
                        preferred_element_type=jnp.float32)  # [rows, vocab]
    m, s = max_and_sum_exp(logits)
    lse = m + jnp.log(s)
    target = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    return jnp.sum(target - lse), (rows, weight, targets, logits, lse)


def _stored_backward(residuals, g):
    rows, weight, targets, logits, lse = residuals
    compute_weight = weight.astype(rows.dtype)
    onehot = jnp.arange(logits.shape[-1]) == targets[:, None]
    d_logits = (g * (onehot.astype(jnp.float32) - jnp.exp(logits - lse[:, None]))
                ).astype(rows.dtype)
    d_rows = jnp.einsum("nv,vd->nd", d_logits, compute_weight,
                        preferred_element_type=jnp.float32).astype(rows.dtype)
    d_weight = jnp.einsum("nv,nd->vd", d_logits, rows, preferred_element_type=jnp.float32)
    return d_rows, d_weight.astype(weight.dtype), None


_stored_logprobs.defvjp(_stored_forward, _stored_backward)


def stored(hidden, weight, input_ids, response_mask, chunk, kernel_blocks=None):
    """Every response position at once (the bench's second halves), logits kept."""
    del chunk, kernel_blocks
    half = hidden.shape[1] // 2
    rows = hidden[:, half - 1:-1].reshape(-1, hidden.shape[-1])  # position t predicts t + 1
    return _stored_logprobs(rows, weight, input_ids[:, half:].reshape(-1))


VARIANTS = {"chunked": chunked, "kernels": kernels, "stored": stored}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(PRESETS))
    parser.add_argument("--variants", default="chunked,kernels,stored")
    parser.add_argument("--tile", default="128x128x64",
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

    inputs = (spec((args.sequences, args.seq, cfg.hidden_size), jnp.bfloat16),
              spec((cfg.vocab_size, cfg.hidden_size), jnp.float32),  # tied, float32 master
              spec((args.sequences, args.seq), jnp.int32),
              spec((args.sequences, args.seq), jnp.int32))
    trips = -(-(args.seq - args.seq // 2) // args.chunk)  # chunks holding a response token
    bandwidth, peak = args.bandwidth_tb_s * 1e12, args.peak_tflops * 1e12
    rows = []
    tile = HeadBlocks(*map(int, args.tile.split("x")))
    for name in args.variants.split(","):
        fn = functools.partial(VARIANTS[name], kernel_blocks=tile) if name == "kernels" \
            else VARIANTS[name]
        grad = jax.jit(jax.value_and_grad(lambda h, w, i, r, f=fn: f(h, w, i, r, args.chunk),
                                          argnums=(0, 1)))
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
