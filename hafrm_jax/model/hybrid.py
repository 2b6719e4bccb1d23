"""The hybrid reward model: one decoder backbone, a policy (LM) head and a reward head.

Both heads read the same final hidden states from ONE forward pass. Params form a single plain
pytree: {"backbone": ..., "lm_head": {"kernel"} (absent when tied), "reward_head": {...}}.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from hafrm_jax.model.config import ModelConfig
from hafrm_jax.model.decoder import Decoder, normal_init, zeros_init
from hafrm_jax.model.readout import gather_last_token, lm_logits, sequence_logprobs


class HybridOutput(NamedTuple):
    rewards: jax.Array | None  # [batch] float32, reward head at the last real token
    logprobs: jax.Array | None  # [batch] float32, summed response-token log-probs (policy head)


class LMHead(nn.Module):
    """The untied policy head: kernel [hidden, vocab] and, for Phi-2, bias [vocab]. Returns
    them rather than applying them, because the readout applies them a chunk at a time."""

    config: ModelConfig

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array | None]:
        cfg = self.config
        kernel = self.param("kernel", normal_init(("embed", "vocab")),
                            (cfg.hidden_size, cfg.vocab_size), cfg.weight_dtype)
        bias = None
        if cfg.lm_head_bias:
            bias = self.param("bias", zeros_init(("vocab",)), (cfg.vocab_size,), cfg.weight_dtype)
        return kernel, bias


class HybridRewardModel(nn.Module):
    """(input_ids, attention_mask, response_mask) [batch, seq] -> HybridOutput.

    `with_rewards` / `with_logprobs` skip a head's work: the plain reward model never touches
    the LM head, and a reference pass never touches the reward head.
    """

    config: ModelConfig

    def setup(self):
        self.backbone = Decoder(self.config)
        if not self.config.tie_embeddings:
            self.lm_head = LMHead(self.config)
        # Zero-initialised, so that every reward starts at exactly 0 and the first BT gradients
        # come from the data, not from a random head. No bias: BT is blind to it, and without
        # one the head is exactly Hugging Face's `score` layer.
        self.reward_head = nn.Dense(
            1, use_bias=False, dtype=jnp.float32, param_dtype=self.config.weight_dtype,
            kernel_init=zeros_init(("embed", None)),
        )

    def lm_head_params(self) -> tuple[jax.Array, jax.Array | None, bool]:
        """The policy head: (matrix, optional bias [vocab], vocab_major). The matrix is the
        untied head's kernel [hidden, vocab], or the tied input embedding as stored,
        [vocab, hidden] (vocab_major): transposing it would copy the table every step."""
        if self.config.tie_embeddings:
            return self.backbone.output_embedding(), None, True
        return (*self.lm_head(), False)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        response_mask: jax.Array | None = None,
        *,
        with_rewards: bool = True,
        with_logprobs: bool = True,
    ) -> HybridOutput:
        hidden = self.backbone(input_ids, attention_mask)  # [batch, seq, hidden]
        rewards = logprobs = None
        if with_rewards or self.is_initializing():
            last = gather_last_token(hidden, attention_mask).astype(jnp.float32)
            rewards = self.reward_head(last)[:, 0]
        if with_logprobs or self.is_initializing():
            if response_mask is None:
                raise ValueError("response_mask is required for log-probs")
            weight, bias, vocab_major = self.lm_head_params()
            logprobs = sequence_logprobs(hidden, weight, input_ids, response_mask,
                                         self.config.logprob_chunk, bias,
                                         self.config.final_logit_softcap, vocab_major,
                                         self.config.lm_head_kernel_blocks)
        return HybridOutput(rewards, logprobs)

    def logits(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Full LM logits [batch, seq, vocab] in float32: for parity checks and small inputs only."""
        hidden = self.backbone(input_ids, attention_mask)
        weight, bias, vocab_major = self.lm_head_params()
        return lm_logits(hidden, weight, bias, self.config.final_logit_softcap, vocab_major)

    def rewards(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Reward-head scores [batch] of whole sequences (no response mask needed)."""
        return self(input_ids, attention_mask, with_logprobs=False).rewards
