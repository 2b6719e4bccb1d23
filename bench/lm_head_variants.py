"""The LM head's log-prob sum (forward and backward) in the ways the head benchmarks compare,
each a scalar function `f(hidden, weight, input_ids, response_mask, chunk)` of a tied head
(weight [vocab, hidden]), on the bench's batch (the second half of each sequence response):

- chunked: the library's `sequence_logprobs` (chunks of `chunk` positions, logits recomputed in
  the backward pass, never stored), with XLA's kernels;
- kernels: the same chunks with the library's Pallas head kernels (hafrm_jax/model/head_kernel.py,
  Triton on NVIDIA GPUs: the logits reduced where they are computed, never written);
- stored: every response position at once, the float32 logits kept from the forward pass for
  the backward (no recompute; +batch x positions x vocab x 4 bytes of memory). Not in the
  library: the floor of what XLA's kernels do with the head when nothing is recomputed;
- chunked_stored: the library's chunk loop with each chunk's float32 logits kept for the
  backward pass instead of recomputed. The loop's count of chunks is traced, so the buffer is
  sized for every chunk and zeroed, and the forward's matmul cannot write into a slice of it:
  both cost more than the recompute they save (bench/RESULTS.md, round 16). Not in the library.

bench/lm_head_compile.py compiles them for an H100 on any machine (peak memory, roofline);
bench/lm_head_sweep.py times them on the local device.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hafrm_jax.model.head_kernel import HeadBlocks
from hafrm_jax.model.readout import (lm_logits, logit_cotangents, max_and_sum_exp,
                                     scored_first_chunks, sequence_logprobs, target_and_lse)


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


def _stored_chunks_forward(hidden, table, targets, weights, active_chunks):
    """The chunk loop's forward pass, keeping each chunk's logits: (summed log-probs [batch],
    log-normalisers and target log-probs [chunks, batch, chunk], logits [chunks, rows, vocab])."""
    chunks, batch, chunk, _ = hidden.shape

    def body(c, carry):
        total, lse, logprob, kept = carry
        logits = lm_logits(hidden[c].reshape(batch * chunk, -1), table, vocab_major=True)
        kept = jax.lax.dynamic_update_index_in_dim(kept, logits, c, 0)
        target, chunk_lse = target_and_lse(logits.reshape(batch, chunk, -1), targets[c])
        chunk_logprob = target - chunk_lse
        total = total + jnp.sum(chunk_logprob * weights[c], axis=-1)
        return (total, jax.lax.dynamic_update_index_in_dim(lse, chunk_lse, c, 0),
                jax.lax.dynamic_update_index_in_dim(logprob, chunk_logprob, c, 0), kept)

    per_position = jnp.zeros(hidden.shape[:3], jnp.float32)
    kept = jnp.zeros((chunks, batch * chunk, table.shape[0]), jnp.float32)  # every chunk's room
    return jax.lax.fori_loop(0, active_chunks, body, (jnp.zeros((batch,), jnp.float32),
                                                      per_position, per_position, kept))


@jax.custom_vjp
def _stored_chunks(hidden, weight, targets, weights, active_chunks):
    return _stored_chunks_fwd(hidden, weight, targets, weights, active_chunks)[0]


def _stored_chunks_fwd(hidden, weight, targets, weights, active_chunks):
    total, lse, logprob, kept = _stored_chunks_forward(hidden, weight.astype(hidden.dtype),
                                                       targets, weights, active_chunks)
    return total, (hidden, weight, targets, weights, active_chunks, lse, logprob, kept)


def _stored_chunks_bwd(residuals, g):
    """The library's backward pass (`logit_cotangents`), from the kept logits instead of a
    recompute matmul."""
    hidden, weight, targets, weights, active_chunks, lse, logprob, kept = residuals
    table = weight.astype(hidden.dtype)
    chunks, batch, chunk, width = hidden.shape
    rows = batch * chunk

    def body(c, carry):
        d_hidden, d_weight = carry
        logits = jax.lax.dynamic_index_in_dim(kept, c, keepdims=False)  # [rows, vocab]
        row_vectors = (lse[c].reshape(-1), -(g[:, None] * weights[c]).reshape(-1))
        d_logits = logit_cotangents(logits, row_vectors, logprob[c].reshape(-1),
                                    targets[c].reshape(-1), None, hidden.dtype)
        d_h = jnp.einsum("nv,vd->nd", d_logits, table, preferred_element_type=jnp.float32)
        d_weight = d_weight + jnp.einsum("nv,nd->vd", d_logits, hidden[c].reshape(rows, width),
                                         preferred_element_type=jnp.float32)
        d_hidden = jax.lax.dynamic_update_index_in_dim(
            d_hidden, d_h.astype(hidden.dtype).reshape(batch, chunk, width), c, 0)
        return d_hidden, d_weight

    init = (jnp.zeros_like(hidden), jnp.zeros(table.shape, jnp.float32))
    d_hidden, d_weight = jax.lax.fori_loop(0, active_chunks, body, init)
    return d_hidden, d_weight.astype(weight.dtype), None, None, None


_stored_chunks.defvjp(_stored_chunks_fwd, _stored_chunks_bwd)


def chunked_stored(hidden, weight, input_ids, response_mask, chunk, kernel_blocks=None):
    """The library's chunks, their logits kept for the backward pass (summed over the batch)."""
    del kernel_blocks
    hidden, targets, weights, active_chunks = scored_first_chunks(hidden, input_ids,
                                                                  response_mask, chunk)
    return jnp.sum(_stored_chunks(hidden, weight, targets, weights, active_chunks))


VARIANTS = {"chunked": chunked, "kernels": kernels, "stored": stored,
            "chunked_stored": chunked_stored}




def value_and_grad(name: str, chunk: int, kernel_blocks: HeadBlocks | None = None):
    """Variant `name`, jitted: (value, (d_hidden, d_weight)) of its scalar on `head_batch`'s
    inputs; `kernel_blocks` the kernels' tile and launch options."""
    fn = VARIANTS[name]
    if kernel_blocks is not None:
        fn = functools.partial(fn, kernel_blocks=kernel_blocks)
    return jax.jit(jax.value_and_grad(lambda h, w, i, r: fn(h, w, i, r, chunk), argnums=(0, 1)))


def head_batch(sequences: int, seq: int, hidden_size: int, vocab: int, seed: int = 0):
    """Random inputs of the head: hidden [sequences, seq, hidden] bf16, a tied float32 table
    [vocab, hidden] at initialisation scale, token ids, and a response mask that is 1 on the
    second half of each sequence (positions seq//2 - 1 onwards are scored)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    hidden = jax.random.normal(keys[0], (sequences, seq, hidden_size), jnp.bfloat16)
    weight = jax.random.normal(keys[1], (vocab, hidden_size), jnp.float32) * 0.02
    input_ids = jax.random.randint(keys[2], (sequences, seq), 0, vocab, jnp.int32)
    response_mask = jnp.zeros((sequences, seq), jnp.int32).at[:, seq // 2:].set(1)
    return hidden, weight, input_ids, response_mask


def head_model_flops(sequences: int, seq: int, hidden_size: int, vocab: int) -> float:
    """Model FLOPs of the head's forward and backward on `head_batch`: three matmuls of
    2 * rows * vocab * hidden (logits, d_hidden, d_weight) over the scored rows; the backward's
    recompute of the logits is not counted (the MFU convention)."""
    rows = sequences * (seq - seq // 2)
    return 3 * 2 * rows * vocab * hidden_size
