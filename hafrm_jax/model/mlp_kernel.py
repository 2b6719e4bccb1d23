"""The gated MLP's backward pass through its activation, fused into a matmul: a Pallas kernel
(Triton on NVIDIA GPUs).

With XLA's kernels the backward pass of `down(silu(gate) * up)` runs `d_h = d_out @ W_down^T` as
a matmul that writes d_h [tokens, mlp] to memory, then an elementwise pass that reads it back
with gate and up and writes their cotangents: at Qwen2.5-0.5B and 16,384 tokens a step that
pass moves 0.8 GB a layer, 4.1 ms of the plain-RM step's 76 ms roofline bound at an H200's
rates (bench/RESULTS.md, round 13), and XLA fuses it into neither matmul. `gate_up_gradients`
computes a tile of d_h in registers and applies the activation's derivative there: d_h is never
written, and gate and up are read once, by the kernel.

`gated_silu_down` is the MLP's output with that backward pass (a custom VJP); the decoder uses
it where `ModelConfig.mlp_kernel == "pallas"`, with the tile of `ModelConfig.mlp_blocks`. Its
forward pass and the weight gradient are XLA's, as before. Gate and up come as one [..., 2, mlp]
array (the stacked projection of `decoder.stacked_gate_up`), whose cotangent the kernel writes
in place of XLA's concatenation.

Triton needs power-of-two tiles: each block shrinks to the largest power of two dividing its
axis (rows, the MLP width and the hidden size must be multiples of 16; rows that are not are
padded). On a mesh each device runs the kernel on its rows of the batch (model/triton_call.py).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from hafrm_jax.model.triton_call import (check_backend, check_launch, check_whole_tiles,
                                         dividing_block, on_row_shards, pad_rows, parse_tile,
                                         round_up, triton_call, whole_array)

OPTION = "mlp_kernel"  # the config field that chooses this kernel


@dataclasses.dataclass(frozen=True)
class MlpBlocks:
    """One Triton program's work and launch options: a tile of rows x mlp of d_h, accumulated
    over `depth` hidden units a step (powers of two >= 16, each shrunk to divide its axis), run by
    `warps` warps with `stages` software-pipelining stages."""

    rows: int = 128
    mlp: int = 128
    depth: int = 64
    warps: int = 8
    stages: int = 3

    def __post_init__(self):
        check_launch("MLP", {"rows": self.rows, "mlp": self.mlp, "depth": self.depth},
                     self.warps, self.stages)

    @classmethod
    def from_tile(cls, tile: str, **launch) -> "MlpBlocks":
        """From a tile written rows x mlp x depth, e.g. "128x128x64"; `launch`: warps, stages."""
        return cls(*parse_tile("MLP", tile, "rows x mlp x depth"), **launch)

    @property
    def tile(self) -> str:
        return f"{self.rows}x{self.mlp}x{self.depth}"


def check_widths(hidden: int, mlp: int) -> None:
    """The contracted (hidden) and tiled (mlp) axes need whole Triton tiles of at least 16."""
    check_whole_tiles(OPTION, {"hidden size": hidden, "intermediate size": mlp})


def _gradient_kernel(d_out_ref, w_down_ref, gate_up_ref, d_gate_up_ref, *, rows: int, mlp: int,
                     depth: int):
    row0 = pl.program_id(0) * rows
    col0 = pl.program_id(1) * mlp
    width = w_down_ref.shape[0]  # gate's columns are [0, width), up's [width, 2 * width)

    def accumulate(k, acc):
        d_out = plgpu.load(d_out_ref.at[pl.ds(row0, rows), pl.ds(k * depth, depth)])
        w = plgpu.load(w_down_ref.at[pl.ds(col0, mlp), pl.ds(k * depth, depth)])
        return acc + plgpu.dot(d_out, w, trans_b=True)

    d_h = jax.lax.fori_loop(0, d_out_ref.shape[1] // depth, accumulate,
                            jnp.zeros((rows, mlp), jnp.float32))  # [rows, mlp], never stored
    gate_cols, up_cols = pl.ds(col0, mlp), pl.ds(width + col0, mlp)
    gate = plgpu.load(gate_up_ref.at[pl.ds(row0, rows), gate_cols]).astype(jnp.float32)
    up = plgpu.load(gate_up_ref.at[pl.ds(row0, rows), up_cols]).astype(jnp.float32)
    sig = jax.nn.sigmoid(gate)
    d_gate = d_h * up * sig * (1 + gate * (1 - sig))  # silu'(g) = s (1 + g (1 - s))
    d_up = d_h * gate * sig
    dtype = d_gate_up_ref.dtype
    plgpu.store(d_gate_up_ref.at[pl.ds(row0, rows), gate_cols], d_gate.astype(dtype))
    plgpu.store(d_gate_up_ref.at[pl.ds(row0, rows), up_cols], d_up.astype(dtype))


def gate_up_gradients(d_out: jax.Array, w_down: jax.Array, gate_up: jax.Array,
                      blocks: MlpBlocks = MlpBlocks()) -> jax.Array:
    """The cotangent [n, 2, mlp] of gate_up [n, 2, mlp] (gate, then up) through
    `silu(gate) * up @ w_down`, given the output's cotangent d_out [n, hidden] and w_down
    [mlp, hidden], all in one dtype (the compute dtype). d_h = d_out @ w_down^T accumulates in
    float32 and the derivative is taken in float32; the result is rounded once, to gate_up's
    dtype."""
    check_backend(OPTION)
    n, hidden = d_out.shape
    width = w_down.shape[0]
    check_widths(hidden, width)
    depth = dividing_block(hidden, blocks.depth)
    mlp = dividing_block(width, blocks.mlp)

    def local(d_out, gate_up, w_down):
        count = d_out.shape[0]
        rows = dividing_block(count, blocks.rows) or blocks.rows
        padded = round_up(count, rows)  # a copy only where no block of >= 16 rows divides n
        operands = [pad_rows(d_out, padded), w_down,
                    pad_rows(gate_up, padded).reshape(padded, 2 * width)]  # a free reshape
        d_gate_up = triton_call(
            functools.partial(_gradient_kernel, rows=rows, mlp=mlp, depth=depth),
            (padded // rows, width // mlp), [whole_array(x.shape) for x in operands],
            whole_array(operands[2].shape), jax.ShapeDtypeStruct(operands[2].shape,
                                                                 gate_up.dtype),
            warps=blocks.warps, stages=blocks.stages, name="mlp_gate_up_gradients",
        )(*operands)
        return (d_gate_up[:count].reshape(count, 2, width),)

    return on_row_shards(local, (d_out, gate_up), (w_down,), row_outputs=1, option=OPTION)[0]


def silu_gated(gate_up: jax.Array) -> jax.Array:
    """silu(gate) * up of gate_up [..., 2, mlp] -> [..., mlp], in its dtype (as the decoder's
    XLA path computes it)."""
    return jax.nn.silu(gate_up[..., 0, :]) * gate_up[..., 1, :]


def _down(h: jax.Array, w_down: jax.Array) -> jax.Array:
    return jax.lax.dot_general(h, w_down, (((h.ndim - 1,), (0,)), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def gated_silu_down(gate_up: jax.Array, w_down: jax.Array,
                    blocks: MlpBlocks = MlpBlocks()) -> jax.Array:
    """silu(gate) * up @ w_down: gate_up [..., 2, mlp], w_down [mlp, hidden] in gate_up's dtype
    -> [..., hidden]. The same value as XLA's path; the backward pass to gate_up runs
    `gate_up_gradients` with `blocks`."""
    return _down(silu_gated(gate_up), w_down)


def _gated_silu_down_fwd(gate_up, w_down, blocks):
    del blocks
    h = silu_gated(gate_up)
    return _down(h, w_down), (gate_up, h, w_down)


def _gated_silu_down_bwd(blocks, residuals, d_out):
    gate_up, h, w_down = residuals
    lead = gate_up.shape[:-2]
    rows = d_out.reshape(-1, d_out.shape[-1])
    d_gate_up = gate_up_gradients(rows, w_down, gate_up.reshape(-1, *gate_up.shape[-2:]),
                                  blocks)
    batch_dims = tuple(range(len(lead)))
    d_w_down = jax.lax.dot_general(h, d_out, ((batch_dims, batch_dims), ((), ())))  # as autodiff
    return d_gate_up.reshape(gate_up.shape), d_w_down.astype(w_down.dtype)


gated_silu_down.defvjp(_gated_silu_down_fwd, _gated_silu_down_bwd)
