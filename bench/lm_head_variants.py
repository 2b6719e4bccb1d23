"""The LM head's log-prob sum (forward and backward) in the ways the head benchmarks compare,
each a scalar function `f(hidden, weight, input_ids, response_mask, chunk)` of a tied head
(weight [vocab, hidden]), on the bench's batch (the second half of each sequence response):

- chunked: the library's `sequence_logprobs` (chunks of `chunk` positions, logits recomputed in
  the backward pass, never stored), with XLA's kernels;
- kernels: the same chunks with the library's Pallas head kernels (hafrm_jax/model/head_kernel.py,
  Triton on NVIDIA GPUs: the logits reduced where they are computed, never written);
- stored: every response position at once, the float32 logits kept from the forward pass for
  the backward (no recompute; +batch x positions x vocab x 4 bytes of memory). Not in the
  library: the floor of what XLA's kernels do with the head when nothing is recomputed.

bench/lm_head_compile.py compiles them for an H100 on any machine (peak memory, roofline);
bench/lm_head_sweep.py times them on the local device.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hafrm_jax.model.head_kernel import HeadBlocks
from hafrm_jax.model.readout import max_and_sum_exp, sequence_logprobs


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
