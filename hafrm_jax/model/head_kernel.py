"""The LM head's two float32 passes fused into its matmuls: Pallas kernels (Triton on NVIDIA GPUs).

With XLA's kernels the log-prob chunk loops (`readout.sequence_logprobs`) write each chunk's
float32 logits [rows, vocab] to memory twice a step and read them back: once in the forward
pass for the log-normaliser, once in the backward pass for `d_logits`. On an H100 those two
memory-bound passes are 3.7 ms of the 0.5B HaF step's 17 ms of LM head (bench/RESULTS.md,
round 6). These kernels compute a tile of logits in registers and reduce it there:

- `log_normalisers`: per row, logsumexp over the vocabulary. Each program computes one
  [block_rows, block_vocab] tile and writes its max and sum of exponentials ([vocab blocks,
  rows] floats: 1/64 of the logits' bytes with 128-wide vocab blocks); XLA combines them. No
  logits are written.
- `logit_gradients`: recomputes a tile and writes `coef * (onehot(target) - softmax)` in the
  compute dtype, the operand the two gradient matmuls (XLA's) read. The float32 logits are
  never written.

Programs run vocab-block-major (the rows axis is the grid's fastest), so the programs running
at once share a tile of the table and the chunk's rows stay in L2.

`lax.platform_dependent` picks the implementation when the program is lowered: the Triton kernels
for CUDA, Pallas' interpreter elsewhere (model/triton_call.py; CPU tests run the very same
kernel bodies, slowly, so the interpreter is for tests only). Triton needs power-of-two tiles:
rows are padded to the row block (zeros, weight 0) and the table's vocabulary to the vocab block
(padded columns masked to -inf, their gradient 0); the hidden size must be a multiple of 16
(every released model's is). On a mesh, each device runs the kernels on its rows of the batch
(`shard_map`).
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

OPTION = "lm_head_kernel"  # the config field that chooses these kernels


@dataclasses.dataclass(frozen=True)
class HeadBlocks:
    """One Triton program's work and launch options: a tile of rows x vocab logits, accumulated
    over `depth` hidden units a step (powers of two >= 16; `depth` shrinks to the largest power
    of two dividing the hidden size), run by `warps` warps (None: 8 for tiles of 128 x 128 or
    more, else 4) with `stages` software-pipelining stages of the depth loop."""

    rows: int = 128
    vocab: int = 128
    depth: int = 64
    warps: int | None = None
    stages: int = 3

    def __post_init__(self):
        check_launch("LM-head", {"rows": self.rows, "vocab": self.vocab, "depth": self.depth},
                     self.warps, self.stages)

    @classmethod
    def from_tile(cls, tile: str, **launch) -> "HeadBlocks":
        """From a tile written rows x vocab x depth, e.g. "128x128x64"; `launch`: warps, stages
        (the fields' defaults where not given)."""
        return cls(*parse_tile("LM-head", tile, "rows x vocab x depth"), **launch)

    @property
    def tile(self) -> str:
        """rows x vocab x depth, as `from_tile` reads it."""
        return f"{self.rows}x{self.vocab}x{self.depth}"

    @property
    def num_warps(self) -> int:
        if self.warps is not None:
            return self.warps
        return 8 if self.rows * self.vocab >= 128 * 128 else 4


def check_hidden_size(hidden: int) -> None:
    """Triton's matmul tiles take at least 16 along the contracted (hidden) axis."""
    check_whole_tiles(OPTION, {"hidden size": hidden})


def table_vocab(table, vocab_major: bool) -> int:
    """The vocabulary size of an LM-head matrix: [vocab, hidden] if vocab_major (a tied
    embedding) else [hidden, vocab]."""
    return table.shape[0 if vocab_major else 1]


def pad_table(weight: jax.Array, vocab_major: bool, blocks: HeadBlocks) -> jax.Array:
    """The LM-head table padded with zeros to whole vocab blocks: [vocab', hidden] if
    vocab_major else [hidden, vocab']. A no-op where the vocab block divides the vocabulary
    (Qwen2.5's 151,936 is 1,187 x 128)."""
    vocab = table_vocab(weight, vocab_major)
    pad = round_up(vocab, blocks.vocab) - vocab
    if not pad:
        return weight
    return jnp.pad(weight, ((0, pad), (0, 0)) if vocab_major else ((0, 0), (0, pad)))


def _logits_tile(hidden_ref, table_ref, bias_ref, *, vocab: int, vocab_major: bool,
                 softcap: float | None, blocks: HeadBlocks, depth: int):
    """This program's float32 logits [block_rows, block_vocab] (padded columns -inf) and their
    column indices [block_vocab]."""
    row0 = pl.program_id(0) * blocks.rows
    col0 = pl.program_id(1) * blocks.vocab
    hidden_size = hidden_ref.shape[1]

    def accumulate(k, acc):
        h = plgpu.load(hidden_ref.at[pl.ds(row0, blocks.rows), pl.ds(k * depth, depth)])
        if vocab_major:
            w = plgpu.load(table_ref.at[pl.ds(col0, blocks.vocab), pl.ds(k * depth, depth)])
            return acc + plgpu.dot(h, w, trans_b=True)
        w = plgpu.load(table_ref.at[pl.ds(k * depth, depth), pl.ds(col0, blocks.vocab)])
        return acc + plgpu.dot(h, w)

    logits = jax.lax.fori_loop(0, hidden_size // depth, accumulate,
                               jnp.zeros((blocks.rows, blocks.vocab), jnp.float32))
    cols = col0 + jnp.arange(blocks.vocab)
    if bias_ref is not None:
        logits = logits + plgpu.load(bias_ref.at[pl.ds(col0, blocks.vocab)]
                                     ).astype(jnp.float32)[None, :]
    if softcap is not None:
        logits = jnp.tanh(logits / softcap) * softcap
    if table_vocab(table_ref, vocab_major) != vocab:  # padded columns take no mass
        logits = jnp.where((cols < vocab)[None, :], logits, -jnp.inf)
    return logits, cols


def _normaliser_kernel(hidden_ref, table_ref, *refs, has_bias: bool, **tile):
    bias_ref = refs[0] if has_bias else None
    max_ref, sum_ref = refs[1:] if has_bias else refs
    logits, _ = _logits_tile(hidden_ref, table_ref, bias_ref, **tile)
    tile_max = jnp.max(logits, axis=1)  # [block_rows]; finite: every tile has a real column
    max_ref[...] = tile_max
    sum_ref[...] = jnp.sum(jnp.exp(logits - tile_max[:, None]), axis=1)


def _gradient_kernel(hidden_ref, table_ref, *refs, has_bias: bool, softcap: float | None, **tile):
    bias_ref = refs[0] if has_bias else None
    targets_ref, lse_ref, coef_ref, d_logits_ref = refs[1:5] if has_bias else refs[:4]
    logits, cols = _logits_tile(hidden_ref, table_ref, bias_ref, softcap=softcap, **tile)
    probs = jnp.exp(logits - lse_ref[...][:, None])
    is_target = (cols[None, :] == targets_ref[...][:, None]).astype(jnp.float32)
    d_logits = coef_ref[...][:, None] * (is_target - probs)
    if softcap is not None:  # through tanh; padded columns have d_logits 0 already
        d_logits = d_logits * (1 - jnp.square(jnp.where(jnp.isfinite(logits), logits, 0)
                                              / softcap))
    d_logits_ref[...] = d_logits.astype(d_logits_ref.dtype)
    if has_bias:
        refs[5][...] = jnp.sum(d_logits, axis=0)  # this row block's d_bias [block_vocab]


def _row_vector(blocks: HeadBlocks) -> pl.BlockSpec:
    return pl.BlockSpec((blocks.rows,), lambda i, j: (i,))


def _kernel_inputs(rows, table, bias, *, vocab, vocab_major, softcap, blocks):
    """What both kernels take besides the rows: the operands every device holds whole (the
    table, the bias padded like it) and the tile's static options; refuses what they cannot
    run."""
    check_backend(OPTION)
    check_hidden_size(rows.shape[1])
    shared = [table]
    if bias is not None:
        padding = table_vocab(table, vocab_major) - bias.shape[0]
        shared.append(jnp.pad(bias, (0, padding)) if padding else bias)
    tile = dict(vocab=vocab, vocab_major=vocab_major, softcap=softcap, blocks=blocks,
                depth=dividing_block(rows.shape[1], blocks.depth))
    return shared, tile


def log_normalisers(rows: jax.Array, table: jax.Array, bias: jax.Array | None, *, vocab: int,
                    vocab_major: bool, softcap: float | None, blocks: HeadBlocks) -> jax.Array:
    """logsumexp over the vocabulary [n] of the logits of rows [n, hidden] under `table`
    (`pad_table`'s output, in the compute dtype; `vocab` its unpadded size), float32."""
    shared, tile = _kernel_inputs(rows, table, bias, vocab=vocab, vocab_major=vocab_major,
                                  softcap=softcap, blocks=blocks)

    def local(rows, *shared):
        n = rows.shape[0]
        padded_rows = round_up(n, blocks.rows)
        operands = [pad_rows(rows, padded_rows), *shared]
        vocab_blocks = table_vocab(table, vocab_major) // blocks.vocab
        grid = (padded_rows // blocks.rows, vocab_blocks)  # rows fastest: programs share a tile
        partial = jax.ShapeDtypeStruct((vocab_blocks, padded_rows), jnp.float32)
        per_tile = pl.BlockSpec((None, blocks.rows), lambda i, j: (j, i))
        tile_max, tile_sum = triton_call(
            functools.partial(_normaliser_kernel, has_bias=bias is not None, **tile), grid,
            [whole_array(x.shape) for x in operands], [per_tile, per_tile], [partial, partial],
            warps=blocks.num_warps, stages=blocks.stages, name="lm_head_log_normalisers",
        )(*operands)  # [vocab blocks, rows] each
        row_max = jnp.max(tile_max, axis=0)
        lse = row_max + jnp.log(jnp.sum(tile_sum * jnp.exp(tile_max - row_max), axis=0))
        return (lse[:n],)

    return on_row_shards(local, (rows,), shared, row_outputs=1, option=OPTION)[0]


def logit_gradients(rows: jax.Array, table: jax.Array, bias: jax.Array | None,
                    targets: jax.Array, lse: jax.Array, coef: jax.Array, *, vocab: int,
                    vocab_major: bool, softcap: float | None, blocks: HeadBlocks
                    ) -> tuple[jax.Array, jax.Array | None]:
    """d_logits [n, vocab'] = coef * (onehot(targets) - softmax(logits)) (times the soft cap's
    derivative) in rows' dtype, with vocab' the table's padded vocabulary (padded columns are 0),
    and d_bias [vocab'] float32 (None without a bias).

    rows [n, hidden]; targets [n] int; lse [n] and coef [n] float32 (from `log_normalisers`, and
    d loss / d log-prob per row, 0 where a row is not scored)."""
    shared, tile = _kernel_inputs(rows, table, bias, vocab=vocab, vocab_major=vocab_major,
                                  softcap=softcap, blocks=blocks)
    padded_vocab = table_vocab(table, vocab_major)

    def local(rows, targets, lse, coef, *shared):
        n = rows.shape[0]
        padded_rows = round_up(n, blocks.rows)
        row_blocks = padded_rows // blocks.rows
        operands = [pad_rows(rows, padded_rows), *shared]
        per_row = [pad_rows(x, padded_rows) for x in (targets, lse, coef)]
        in_specs = [whole_array(x.shape) for x in operands] + [_row_vector(blocks)] * 3
        out_specs = [pl.BlockSpec((blocks.rows, blocks.vocab), lambda i, j: (i, j))]
        out_shape = [jax.ShapeDtypeStruct((padded_rows, padded_vocab), rows.dtype)]
        if bias is not None:
            out_specs.append(pl.BlockSpec((None, blocks.vocab), lambda i, j: (i, j)))
            out_shape.append(jax.ShapeDtypeStruct((row_blocks, padded_vocab), jnp.float32))
        outputs = triton_call(
            functools.partial(_gradient_kernel, has_bias=bias is not None, **tile),
            (row_blocks, padded_vocab // blocks.vocab), in_specs, out_specs, out_shape,
            warps=blocks.num_warps, stages=blocks.stages, name="lm_head_logit_gradients",
        )(*operands, *per_row)
        d_logits = outputs[0][:n]
        return (d_logits,) if bias is None else (d_logits, jnp.sum(outputs[1], axis=0))

    outputs = on_row_shards(local, (rows, targets.astype(jnp.int32), lse, coef), shared,
                            row_outputs=1, summed_outputs=0 if bias is None else 1, option=OPTION)
    return outputs[0], (outputs[1] if bias is not None else None)


def target_logits(rows: jax.Array, table: jax.Array, bias: jax.Array | None,
                  targets: jax.Array, *, vocab_major: bool, softcap: float | None) -> jax.Array:
    """The logit [n] of each row's target, float32: the target's table row gathered and dotted
    with the row (products exact in float32, as in the kernels' matmuls)."""
    columns = (jnp.take(table, targets, axis=0) if vocab_major
               else jnp.take(table, targets, axis=1).T)  # [n, hidden]
    logits = jnp.sum(rows.astype(jnp.float32) * columns.astype(jnp.float32), axis=-1)
    if bias is not None:
        logits = logits + jnp.take(bias, targets).astype(jnp.float32)
    if softcap is not None:
        logits = jnp.tanh(logits / softcap) * softcap
    return logits
