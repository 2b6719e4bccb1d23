"""Pure functions that read the two heads' quantities off the final hidden states.

- `last_token_index`: where the reward is read, the last real token, whichever side is padded.
- `sequence_logprobs`: the summed log-probability of the response tokens under the LM head,
  computed a chunk of positions at a time so that the [batch, seq, vocab] float32 logits never
  exist at once, in the forward or the backward pass; prompt positions never reach the LM head,
  and the backward pass (a custom VJP) recomputes each chunk's logits once, with no autodiff of
  the log-softmax. With `kernel_blocks` a chunk's logits are reduced inside Pallas kernels
  (`head_kernel`) and never written to memory at all.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from hafrm_jax.model.head_kernel import (HeadBlocks, log_normalisers, logit_gradients,
                                         pad_table, table_vocab, target_logits)
from hafrm_jax.model.matmul import einsum_f32


def last_token_index(attention_mask: jax.Array) -> jax.Array:
    """Index [batch] of the last position whose mask is 1, for left or right padding."""
    seq = attention_mask.shape[-1]
    reversed_first = jnp.argmax(jnp.flip(attention_mask.astype(jnp.int32), axis=-1), axis=-1)
    return seq - 1 - reversed_first


def gather_last_token(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """hidden [batch, seq, hidden] -> hidden state at the last real token [batch, hidden]."""
    index = last_token_index(attention_mask)
    return jnp.take_along_axis(hidden, index[:, None, None], axis=1)[:, 0]


def next_token_targets(input_ids: jax.Array, response_mask: jax.Array):
    """Position t predicts token t+1: targets [batch, seq] and their weights [batch, seq].

    The weight of position t is the response mask of token t+1, so prompt and padding tokens are
    never scored and the final EOS (a response token) is; the last position scores nothing.
    """
    targets = jnp.pad(input_ids[:, 1:], ((0, 0), (0, 1)))
    weights = jnp.pad(response_mask[:, 1:].astype(jnp.float32), ((0, 0), (0, 1)))
    return targets, weights


def scored_token_counts(response_mask: jax.Array) -> jax.Array:
    """[..., seq] -> [...] float32: how many response tokens a log-prob sum scores (IPO's
    length). A sequence's first token has no position before it, so an empty prompt (no BOS)
    leaves its first response token unscored."""
    return jnp.sum(response_mask[..., 1:], axis=-1).astype(jnp.float32)


def lm_logits(hidden: jax.Array, lm_weight: jax.Array, lm_bias: jax.Array | None = None,
              softcap: float | None = None, vocab_major: bool = False) -> jax.Array:
    """float32 logits [..., vocab] = hidden @ weight (+ bias), optionally soft-capped (Gemma-2).

    lm_weight is [hidden, vocab], or [vocab, hidden] with `vocab_major` (a tied input embedding,
    used as stored: a transposed copy of it would cost a pass over the table each step).
    Computed in hidden's dtype; the backward matmuls too (`einsum_f32`), with float32
    accumulation, and lm_weight (a float32 master weight, say) gets a gradient of its own dtype.
    """
    rows = hidden.reshape(-1, hidden.shape[-1])  # [positions, hidden]
    spec = "nd,vd->nv" if vocab_major else "nd,dv->nv"
    logits = einsum_f32(spec, rows, lm_weight).reshape(*hidden.shape[:-1], -1)
    if lm_bias is not None:
        logits = logits + lm_bias.astype(jnp.float32)
    if softcap is not None:
        logits = jnp.tanh(logits / softcap) * softcap
    return logits


def sequence_logprobs(
    hidden: jax.Array,
    lm_weight: jax.Array,
    input_ids: jax.Array,
    response_mask: jax.Array,
    chunk_size: int,
    lm_bias: jax.Array | None = None,
    softcap: float | None = None,
    vocab_major: bool = False,
    kernel_blocks: HeadBlocks | None = None,
) -> jax.Array:
    """Sum of response-token log-probs [batch] under the LM head, in float32.

    Only scored positions reach the LM head: a stable sort moves each row's scored positions
    (those predicting a response token) to the front, in order, and the chunks past the longest
    row's count are never computed, in the forward or the backward pass. Prompt positions, often
    half a sequence, cost nothing, whatever their length per row.

    Args:
      hidden: final hidden states [batch, seq, hidden] (compute dtype).
      lm_weight: LM-head matrix [hidden, vocab], or [vocab, hidden] with `vocab_major` (a tied
        input embedding); lm_bias [vocab] where the head has one.
      input_ids: [batch, seq] token ids.
      response_mask: [batch, seq], 1 at response tokens (EOS included).
      chunk_size: positions per chunk. Peak logits memory is batch*chunk*vocab floats.
      softcap: final-logit soft cap (Gemma-2), applied before the log-softmax.
      kernel_blocks: tiles of the Pallas kernels (`head_kernel`) that reduce each chunk's
        logits where they are computed; None: XLA's kernels, which write them.
    """
    hidden, targets, weights, active_chunks = scored_first_chunks(hidden, input_ids,
                                                                  response_mask, chunk_size)
    static = HeadOptions(softcap, vocab_major, table_vocab(lm_weight, vocab_major), kernel_blocks)
    return _chunked_logprobs(static, hidden, lm_weight, lm_bias, targets, weights,
                             active_chunks)


def scored_first_chunks(hidden: jax.Array, input_ids: jax.Array, response_mask: jax.Array,
                        chunk_size: int):
    """The chunk loops' inputs: each row's scored positions (those predicting a response token)
    moved to the front in order by a stable sort, then cut into chunks of `chunk_size`.

    Returns hidden [chunks, batch, chunk, hidden], targets and weights [chunks, batch, chunk],
    and active_chunks, a traced count of the chunks that hold a scored position (the rest are
    never computed).
    """
    batch, seq, _ = hidden.shape
    targets, weights = next_token_targets(input_ids, response_mask)
    order = jnp.argsort(weights == 0, axis=-1, stable=True)  # [batch, seq]: scored first
    hidden = jnp.take_along_axis(hidden, order[..., None], axis=1)
    targets = jnp.take_along_axis(targets, order, axis=1)
    weights = jnp.take_along_axis(weights, order, axis=1)
    num_chunks = -(-seq // chunk_size)
    pad = num_chunks * chunk_size - seq
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        weights = jnp.pad(weights, ((0, 0), (0, pad)))

    def to_chunks(x):  # [batch, seq, ...] -> [chunks, batch, chunk, ...]
        return jnp.moveaxis(x.reshape(batch, num_chunks, chunk_size, *x.shape[2:]), 1, 0)

    scored = jnp.max(jnp.sum(weights != 0, axis=-1))
    active_chunks = (scored + chunk_size - 1) // chunk_size  # chunks holding a scored position
    return to_chunks(hidden), to_chunks(targets), to_chunks(weights), active_chunks


def max_and_sum_exp(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(m, s) over the last axis with logsumexp = m + log(s): m the max, s = sum(exp(x - m)),
    in ONE read of `logits` (a variadic reduction carrying both, rescaling s as m grows).

    `jax.nn.logsumexp` reads its input twice, once for the max and once for the exponentials,
    and the LM head's [batch, chunk, vocab] float32 logits are the largest array of the step.
    """
    def combine(a, b):
        (m_a, s_a), (m_b, s_b) = a, b
        m = jnp.maximum(m_a, m_b)
        # exp of (smaller max - larger max) rescales the smaller side's sum; equal maxima
        # (-inf included, where the difference is NaN) add as they are
        low_m, low_s = jnp.where(m_a < m_b, m_a, m_b), jnp.where(m_a < m_b, s_a, s_b)
        high_s = jnp.where(m_a < m_b, s_b, s_a)
        scaled = jnp.where(low_m == m, low_s, low_s * jnp.exp(low_m - m))
        return m, high_s + scaled

    return jax.lax.reduce((logits, jnp.ones_like(logits)),
                          (jnp.array(-jnp.inf, logits.dtype), jnp.array(0, logits.dtype)),
                          combine, (logits.ndim - 1,))


class HeadOptions(NamedTuple):
    """Static options of the chunk loops: the soft cap, the matrix's layout, its unpadded
    vocabulary, and the Pallas kernels' tiles (None: XLA's kernels)."""

    softcap: float | None
    vocab_major: bool
    vocab: int
    kernel_blocks: HeadBlocks | None


def _head_table(static: HeadOptions, weight: jax.Array, dtype) -> jax.Array:
    """The LM-head matrix the chunk loops read: cast to the compute dtype once, outside the loops
    (inside them, XLA converted the whole matrix every chunk), and padded for the kernels."""
    table = weight.astype(dtype)
    if static.kernel_blocks is None:
        return table
    return pad_table(table, static.vocab_major, static.kernel_blocks)


def target_and_lse(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float32 logits [..., vocab] and target ids [...] -> (target logits, log-normalisers), [...]
    each, in one reduction over the logits (`max_and_sum_exp`)."""
    chunk_max, chunk_sum = max_and_sum_exp(logits)
    target = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return target, chunk_max + jnp.log(chunk_sum)


def logit_cotangents(logits: jax.Array, rows: tuple[jax.Array, jax.Array], logprob: jax.Array,
                     targets: jax.Array, softcap: float | None, dtype) -> jax.Array:
    """d total / d logits [n, vocab] in `dtype` from a chunk's float32 logits [n, vocab] (soft-
    capped where the head is): -coef * softmax everywhere but at the target, whose entry,
    coef * (1 - p), is set in place from the forward's target log-prob [n] with expm1, so it
    does not cancel against a one-hot. rows: (lse, -coef) as [n] vectors; targets [n].

    Where `logits` is a matmul's result, XLA fuses the exponential, the scaling and the rounding
    into that matmul (its float32 logits then never reach memory), but only for a 2-D product
    whose row operands are plain loop values: a reshape of the product, a slice or a negation of
    a row vector, or a one-hot compare (an iota) keep the epilogue a pass of its own (seen in
    compiles for an H100; tests/test_gpu_compile.py).
    """
    row_lse, row_neg_coef = rows
    d_logits = jnp.exp(logits - row_lse[:, None]) * row_neg_coef[:, None]
    if softcap is not None:
        d_logits = d_logits * (1 - jnp.square(logits / softcap))  # through tanh
    target_entry = row_neg_coef * jnp.expm1(logprob)  # coef * (1 - p), [n]
    if softcap is not None:  # the target's capped logit is its log-prob + lse
        target_entry = target_entry * (1 - jnp.square((logprob + row_lse) / softcap))
    return d_logits.astype(dtype).at[jnp.arange(logits.shape[0]), targets].set(
        target_entry.astype(dtype), unique_indices=True)


def _chunk_target_and_lse(static: HeadOptions, hidden, table, bias, targets):
    """A chunk's target logits and log-normalisers, [batch, chunk] float32 each."""
    softcap, vocab_major, vocab, kernel_blocks = static
    if kernel_blocks is None:  # XLA: the chunk's float32 logits are written, then reduced
        return target_and_lse(lm_logits(hidden, table, bias, softcap, vocab_major), targets)
    rows = hidden.reshape(-1, hidden.shape[-1])  # [b * k, hidden]
    lse = log_normalisers(rows, table, bias, vocab=vocab, vocab_major=vocab_major,
                          softcap=softcap, blocks=kernel_blocks)
    target = target_logits(rows, table, bias, targets.reshape(-1), vocab_major=vocab_major,
                           softcap=softcap)
    return target.reshape(targets.shape), lse.reshape(targets.shape)


def _chunk_d_logits(static: HeadOptions, hidden, table, bias, targets, logprob, rows):
    """d total / d logits of a chunk [batch, chunk, vocab'] in the compute dtype, and its sum
    over positions (d_bias [vocab'], float32; None without a bias), vocab' the table's (padded)
    vocabulary. logprob [batch, chunk]: the forward's target log-probs; rows: the chunk's
    (lse, -coef) as [batch * chunk] vectors, coef = d total / d log-prob, as the loop's carry
    hands them over (see `_chunked_logprobs_bwd`).

    With XLA's kernels, `logit_cotangents` of the recomputed logits, which XLA computes as the
    recompute matmul's epilogue.
    """
    softcap, vocab_major, vocab, kernel_blocks = static
    hidden_rows = hidden.reshape(-1, hidden.shape[-1])  # [n, hidden]
    if kernel_blocks is None:
        logits = lm_logits(hidden_rows, table, bias, softcap, vocab_major)  # [n, vocab] f32
        d_logits = logit_cotangents(logits, rows, logprob.reshape(-1), targets.reshape(-1),
                                    softcap, hidden.dtype)
        d_bias = None if bias is None else jnp.sum(d_logits, axis=0, dtype=jnp.float32)
        return d_logits.reshape(*targets.shape, -1), d_bias
    row_lse, row_neg_coef = rows
    d_logits, d_bias = logit_gradients(
        hidden_rows, table, bias, targets.reshape(-1), row_lse, -row_neg_coef, vocab=vocab,
        vocab_major=vocab_major, softcap=softcap, blocks=kernel_blocks)
    return d_logits.reshape(*targets.shape, d_logits.shape[-1]), d_bias


def _chunked_forward(static, hidden, weight, bias, targets, weights, active_chunks):
    """Summed log-probs [batch], and each position's log-normaliser and target log-prob
    [chunks, batch, chunk]."""
    _, batch, chunk, _ = hidden.shape
    table = _head_table(static, weight, hidden.dtype)

    def body(c, carry):
        total, lse, logprob = carry
        target, chunk_lse = _chunk_target_and_lse(static, hidden[c], table, bias, targets[c])
        chunk_logprob = target - chunk_lse
        total = total + jnp.sum(chunk_logprob * weights[c], axis=-1)
        return (total, jax.lax.dynamic_update_index_in_dim(lse, chunk_lse, c, 0),
                jax.lax.dynamic_update_index_in_dim(logprob, chunk_logprob, c, 0))

    per_position = jnp.zeros(hidden.shape[:3], jnp.float32)
    init = (jnp.zeros((batch,), jnp.float32), per_position, per_position)
    return jax.lax.fori_loop(0, active_chunks, body, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked_logprobs(static, hidden, weight, bias, targets, weights, active_chunks):
    """hidden [chunks, batch, chunk, hidden] -> summed log-probs [batch], computing only the
    first `active_chunks` chunks (a traced count: a loop of dynamic length, so no shape changes).
    static: a HeadOptions.

    A custom VJP because the backward pass needs neither the forward's logits nor autodiff of
    its log-softmax: it recomputes a chunk's logits once, and d_logits is
    g * weight * (onehot(target) - softmax), from the stored log-normalisers and target
    log-probs.
    """
    return _chunked_forward(static, hidden, weight, bias, targets, weights, active_chunks)[0]


def _chunked_logprobs_fwd(static, hidden, weight, bias, targets, weights, active_chunks):
    total, lse, logprob = _chunked_forward(static, hidden, weight, bias, targets, weights,
                                           active_chunks)
    return total, (hidden, weight, bias, targets, weights, active_chunks, lse, logprob)


def _chunked_logprobs_bwd(static, residuals, g):
    vocab_major = static.vocab_major
    hidden, weight, bias, targets, weights, active_chunks, lse, logprob = residuals
    # the matrix in the compute dtype; with the kernels, padded to whole vocab blocks, as are
    # d_logits (0 in the padded columns), d_weight and d_bias until the loop ends
    table = _head_table(static, weight, hidden.dtype)
    # d_hidden = d_logits @ weight^T and d_weight = hidden^T @ d_logits, in weight's layout
    d_hidden_spec, d_weight_spec = (("bkv,vd->bkd", "bkv,bkd->vd") if vocab_major
                                    else ("bkv,dv->bkd", "bkd,bkv->dv"))

    def chunk_rows(c):  # chunk c's (lse, -coef), [batch * chunk] each
        coef = g[:, None] * jax.lax.dynamic_index_in_dim(weights, c, keepdims=False)
        return (jax.lax.dynamic_index_in_dim(lse, c, keepdims=False).reshape(-1),
                -coef.reshape(-1))

    def body(c, carry):
        # the row vectors come in the carry, sliced one iteration ahead: sliced here they would
        # keep XLA from fusing the softmax into the recompute matmul (`_chunk_d_logits`)
        d_hidden, d_weight, d_bias, rows = carry
        d_logits, chunk_d_bias = _chunk_d_logits(static, hidden[c], table, bias, targets[c],
                                                 logprob[c], rows)
        if d_bias is not None:
            d_bias = d_bias + chunk_d_bias
        # bf16 operands, float32 accumulation
        d_h = jnp.einsum(d_hidden_spec, d_logits, table, preferred_element_type=jnp.float32)
        operands = (d_logits, hidden[c]) if vocab_major else (hidden[c], d_logits)
        d_weight = d_weight + jnp.einsum(d_weight_spec, *operands,
                                         preferred_element_type=jnp.float32)
        # lax's dynamic update, not `.at[c].set`: with the latter XLA copied the whole bf16
        # d_hidden buffer in every iteration (seen in the compiled HLO)
        d_hidden = jax.lax.dynamic_update_index_in_dim(d_hidden, d_h.astype(hidden.dtype), c, 0)
        return d_hidden, d_weight, d_bias, chunk_rows(c + 1)  # clamped past the last chunk

    padded_vocab = table_vocab(table, vocab_major)
    init = (jnp.zeros_like(hidden), jnp.zeros(table.shape, jnp.float32),
            None if bias is None else jnp.zeros((padded_vocab,), jnp.float32), chunk_rows(0))
    d_hidden, d_weight, d_bias, _ = jax.lax.fori_loop(0, active_chunks, body, init)
    d_weight = d_weight[:static.vocab] if vocab_major else d_weight[:, :static.vocab]
    return (d_hidden, d_weight.astype(weight.dtype),
            None if bias is None else d_bias[:static.vocab].astype(bias.dtype), None, None, None)


_chunked_logprobs.defvjp(_chunked_logprobs_fwd, _chunked_logprobs_bwd)
