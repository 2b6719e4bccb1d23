"""A trained reward model, ready to score text: from a training workdir or a Hugging Face
checkpoint directory, with its tokenizer, on a device mesh.

`RewardScorer.score_pairs` gives per-pair rewards (and, where a reference model is known, the
policy head's implicit rewards); `score_responses` gives one reward per (prompt, response).
Both batch and shard the work like training does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import numpy as np
from jax.sharding import Mesh

from hafrm_jax import configuration
from hafrm_jax.data.records import PreferencePair, user_turn
from hafrm_jax.data.tokenize import TokenizeStats, tokenize_pairs, tokenize_responses
from hafrm_jax.evaluation import eval_batch_size, make_score_fn, score_pairs
from hafrm_jax.hf.checkpoint import (checkpoint_heads, pretrained_model_config,
                                     resolve_checkpoint)
from hafrm_jax.hf.config import UnsupportedModelError
from hafrm_jax.hf.tokenizer import load_tokenizer
from hafrm_jax.metrics import implicit_rewards
from hafrm_jax.model.config import ModelConfig
from hafrm_jax.sharding import DEFAULT_RULES, Rules, make_mesh
from hafrm_jax.train.run_files import saved_prompt_format
from hafrm_jax.train.state import init_params
from hafrm_jax.workdir import load_run, starting_params

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RewardScorer:
    model_config: ModelConfig
    params: Any
    tokenizer: Any
    mesh: Mesh
    rules: Rules
    max_length: int
    max_prompt_length: int
    chat_format: str = "auto"
    prompt_template: str = "{prompt}"  # for plain-text prompts, as the run was trained
    batch_size: int = 32
    ref_params: Any = None  # the starting model, for DPO's implicit reward
    beta: float = 0.1
    source: str = ""  # where the model came from, for reports
    config: Any = None  # the training run's ConfigDict (None for a HF checkpoint)
    # "reward": the reward head; "implicit": beta * (logp - ref_logp), for a DPO run (its
    # reward head is never trained)
    scored_by: str = "reward"
    # how the model saw prompts in training: "turns" (chat messages: a plain-text prompt given
    # here is scored as the user's turn, as RewardBench means it) or "text" (as it is, through
    # prompt_template)
    prompt_format: str = "text"
    reward_head: bool = True  # False: a checkpoint without one (a policy export, a base LM)

    def _as_trained(self, prompt):
        """A plain-text prompt as the user's turn where the model was trained on chat turns."""
        return user_turn(prompt) if isinstance(prompt, str) and self.prompt_format == "turns" \
            else prompt

    def _tokenize_pairs(self, pairs: list[PreferencePair]) -> tuple[Any, TokenizeStats]:
        pairs = [dataclasses.replace(p, prompt=self._as_trained(p.prompt)) for p in pairs]
        return tokenize_pairs(pairs, self.tokenizer, self.max_length, self.max_prompt_length,
                              self.chat_format, self.prompt_template)

    def _score(self, data, with_logprobs: bool, params=None) -> dict[str, np.ndarray]:
        fn = make_score_fn(self.model_config, self.mesh, self.rules, with_rewards=params is None,
                           with_logprobs=with_logprobs)
        batch = eval_batch_size(self.batch_size, self.mesh, self.rules)
        return score_pairs(fn, self.params if params is None else params, data, len(data),
                           batch, 64, self.mesh, self.rules)

    def score_pairs(self, pairs: list[PreferencePair]) -> tuple[dict[str, np.ndarray],
                                                                 TokenizeStats]:
        """{"rewards" [n, 2], and with a reference model "logps", "ref_logps" [n, 2]} for the
        pairs that survive tokenisation (identical pairs are dropped and counted)."""
        self._check_reward_head()
        data, stats = self._tokenize_pairs(pairs)
        implicit = self.ref_params is not None
        scores = self._score(data, with_logprobs=implicit)
        if implicit:
            scores["ref_logps"] = self._score(data, True, params=self.ref_params)["logps"]
        return scores, stats

    def _check_reward_head(self) -> None:
        if self.scored_by == "reward" and not self.reward_head:
            raise UnsupportedModelError(
                f"{self.source} has no reward head (no `score` tensor): every response would "
                "score 0. A DPO policy export is scored by its implicit reward: give its "
                "starting model as the reference (eval.py --reference=START).")

    def mean_logprob_margins(self, pairs: list[PreferencePair]) -> np.ndarray:
        """Training-free preference: per pair, the policy head's mean per-token log-prob of
        the chosen response minus the rejected one's (RewardBench's reference-free score)."""
        data, _ = self._tokenize_pairs(pairs)
        logps = self._score(data, with_logprobs=True, params=self.params)["logps"]
        # scored tokens: the first token of a sequence (an empty prompt's first response
        # token) is not predicted by anything
        lengths = (data.lengths - np.maximum(data.prompt_lengths, 1)[:, None]).astype(np.float64)
        mean = logps / lengths
        return mean[:, 0] - mean[:, 1]

    def score_responses(self, prompts: list, responses: list[str]) -> np.ndarray:
        """Reward [n] of each response to its prompt, in input order: the reward head's, or a
        DPO run's implicit reward beta * (logp - ref_logp) (`scored_by`)."""
        self._check_reward_head()
        data = tokenize_responses([self._as_trained(p) for p in prompts], responses,
                                  self.tokenizer, self.max_length, self.max_prompt_length,
                                  self.chat_format, self.prompt_template)
        if self.scored_by == "implicit":
            logps = self._score(data, True, params=self.params)["logps"][:, 0]
            ref_logps = self._score(data, True, params=self.ref_params)["logps"][:, 0]
            return implicit_rewards(logps, ref_logps, self.beta)
        return self._score(data, with_logprobs=False)["rewards"][:, 0]


def load_scorer(path: str, *, which: str = "best", reference: str | None = None,
                batch_size: int = 32, max_length: int | None = None,
                max_prompt_length: int | None = None, mesh: Mesh | None = None,
                beta: float | None = None) -> RewardScorer:
    """A scorer from a training workdir (config.json present) or a HF checkpoint directory.

    For a workdir, the reference model (for implicit rewards) is rebuilt as training started
    from it: the pretrained checkpoint, or the same random initialisation. For a HF checkpoint,
    `reference` may name the directory of its starting model; a checkpoint without a reward
    head (a DPO policy export) is then scored by its implicit reward. `beta` scales implicit
    rewards (default: the run's, or 0.1 for a HF checkpoint).
    """
    mesh = mesh or make_mesh()
    if os.path.exists(os.path.join(path, "model_config.json")):
        run = load_run(path, which, mesh=mesh)
        rules = configuration.logical_rules(run.config)
        ref_params = None
        if run.config.train.method != "baseline":
            ref_params = starting_params(run.config, run.model_config, mesh, rules)
        d = run.config.data
        return RewardScorer(run.model_config, run.params, run.tokenizer, mesh, rules,
                            max_length or d.max_length, max_prompt_length or d.max_prompt_length,
                            d.chat_format, d.prompt_template, batch_size, ref_params,
                            run.config.train.beta if beta is None else beta,
                            f"{path} (step {run.step})", run.config,
                            "implicit" if run.config.train.method == "dpo" else "reward",
                            # a run from before data.json, or on mixed prompts: as they are
                            "turns" if saved_prompt_format(path) == "turns" else "text")
    directory = resolve_checkpoint(path, "checkpoint")
    config = pretrained_model_config(directory)
    has_reward, has_policy = checkpoint_heads(directory, config)
    if reference and not has_policy:
        raise UnsupportedModelError(
            f"{directory} has no LM head (no `lm_head.weight`: a reward-model export), so it "
            "has no implicit reward to compare with --reference (loading would put the input "
            "embedding in its place). Export the policy too (export.py --head=policy) and "
            "give that.")
    params, _ = init_params(config, 0, mesh, DEFAULT_RULES, directory)
    ref_params = None
    if reference:
        ref_dir = resolve_checkpoint(reference, "reference")
        ref_params, _ = init_params(pretrained_model_config(ref_dir), 0, mesh, DEFAULT_RULES,
                                    ref_dir)
    tokenizer = load_tokenizer(directory)
    # a chat model (its tokenizer has a chat template) reads a prompt as the user's turn
    return RewardScorer(config, params, tokenizer, mesh, DEFAULT_RULES,
                        max_length or 2048, max_prompt_length or 1024, "auto",
                        batch_size=batch_size, ref_params=ref_params,
                        beta=0.1 if beta is None else beta, source=directory,
                        scored_by="implicit" if reference and not has_reward else "reward",
                        prompt_format="turns" if getattr(tokenizer, "chat_template", None)
                        else "text", reward_head=has_reward)

