"""Pure functions that read the two heads' quantities off the final hidden states.

- `last_token_index`: where the reward is read, the last real token, whichever side is padded.
- `sequence_logprobs`: the summed log-probability of the response tokens under the LM head,
  computed a chunk of positions at a time so that the [batch, seq, vocab] float32 logits never
  exist at once, in the forward or the backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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


def lm_logits(hidden: jax.Array, lm_weight: jax.Array, lm_bias: jax.Array | None = None,
              softcap: float | None = None) -> jax.Array:
    """float32 logits [..., vocab] = hidden @ weight (+ bias), optionally soft-capped (Gemma-2).

    Computed in hidden's dtype; the backward matmuls too (`einsum_f32`), with float32
    accumulation, and lm_weight (a float32 master weight, say) gets a gradient of its own dtype.
    """
    rows = hidden.reshape(-1, hidden.shape[-1])  # [positions, hidden]
    logits = einsum_f32("nd,dv->nv", rows, lm_weight).reshape(*hidden.shape[:-1], -1)
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
) -> jax.Array:
    """Sum of response-token log-probs [batch] under the LM head, in float32.

    Args:
      hidden: final hidden states [batch, seq, hidden] (compute dtype).
      lm_weight: LM-head matrix [hidden, vocab]; lm_bias [vocab] where the head has one.
      input_ids: [batch, seq] token ids.
      response_mask: [batch, seq], 1 at response tokens (EOS included).
      chunk_size: sequence positions per chunk. Peak logits memory is batch*chunk*vocab floats.
      softcap: final-logit soft cap (Gemma-2), applied before the log-softmax.
    """
    batch, seq, _ = hidden.shape
    targets, weights = next_token_targets(input_ids, response_mask)
    num_chunks = -(-seq // chunk_size)
    pad = num_chunks * chunk_size - seq
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
        weights = jnp.pad(weights, ((0, 0), (0, pad)))

    def to_chunks(x):  # [batch, seq, ...] -> [chunks, batch, chunk, ...]
        return jnp.moveaxis(x.reshape(batch, num_chunks, chunk_size, *x.shape[2:]), 1, 0)

    @jax.checkpoint  # the backward pass recomputes each chunk's logits instead of storing them
    def chunk_logprobs(h, t, m):
        logits = lm_logits(h, lm_weight, lm_bias, softcap)  # [batch, chunk, vocab] float32
        target_logits = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        token_logprobs = target_logits - jax.nn.logsumexp(logits, axis=-1)
        return jnp.sum(token_logprobs * m, axis=-1)  # [batch]

    def body(total, xs):
        return total + chunk_logprobs(*xs), None

    total, _ = jax.lax.scan(
        body, jnp.zeros((batch,), jnp.float32),
        (to_chunks(hidden), to_chunks(targets), to_chunks(weights)),
    )
    return total
