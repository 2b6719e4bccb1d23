"""Token-level preference pairs: prompt + response + EOS per side, with the masks derived.

`TokenizedPairs` keeps a split as dense numpy arrays ([pairs, 2, seq], right-padded), so that
batching, label noise and reference log-probs are cheap array operations.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from hafrm_jax.data.records import PreferencePair

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TokenizedPairs:
    """A split of tokenised pairs; side 0 is the chosen response, side 1 the rejected one."""

    tokens: np.ndarray  # [pairs, 2, max_length] int32, prompt + response + EOS, right-padded
    lengths: np.ndarray  # [pairs, 2] int32, real tokens per sequence
    prompt_lengths: np.ndarray  # [pairs] int32, prompt tokens (shared by both sides)
    ref_logps: np.ndarray | None = None  # [pairs, 2] float32, frozen starting model's log-probs

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def with_swapped(self, indices: np.ndarray) -> "TokenizedPairs":
        """A copy in which the pairs at `indices` have chosen and rejected exchanged."""
        out = dataclasses.replace(self, tokens=self.tokens.copy(), lengths=self.lengths.copy(),
                                  ref_logps=None if self.ref_logps is None else self.ref_logps.copy())
        for array in (out.tokens, out.lengths) + (() if out.ref_logps is None else (out.ref_logps,)):
            array[indices] = array[indices][:, ::-1]
        return out


@dataclasses.dataclass(frozen=True)
class TokenizeStats:
    pairs_in: int
    pairs_out: int
    prompts_truncated: int
    responses_truncated: int
    identical_dropped: int  # chosen == rejected after truncation: no preference left to learn


def prompt_text(prompt, tokenizer, prompt_template: str) -> str:
    """Chat turns through the tokenizer's chat template; plain text through `prompt_template`."""
    if isinstance(prompt, str):
        return prompt_template.format(prompt=prompt)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    turns = "".join(f"{m['role']}: {m['content']}\n" for m in prompt)
    return prompt_template.format(prompt=turns)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(prompt, tokenizer, prompt_template: str) -> list[int]:
    """Prompt ids, with the BOS token first where the tokenizer has one and the text lacks it."""
    text = prompt_text(prompt, tokenizer, prompt_template)
    ids = _encode(tokenizer, text)
    bos = tokenizer.bos_token_id
    if bos is not None and not text.startswith(tokenizer.bos_token) and ids[:1] != [bos]:
        ids = [bos] + ids
    return ids


def tokenize_pairs(
    pairs: list[PreferencePair],
    tokenizer,
    max_length: int,
    max_prompt_length: int,
    prompt_template: str = "{prompt}",
) -> tuple[TokenizedPairs, TokenizeStats]:
    """Tokenise pairs: the prompt is cut from the left to `max_prompt_length`, each response from
    the right to fill `max_length`; EOS is appended after the cut, so every sequence ends in EOS
    and the reward is always read on it."""
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be below max_length "
                         f"({max_length}) to leave room for a response")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; set one (tokenizer.eos_token) first")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    tokens = np.full((len(pairs), 2, max_length), pad, np.int32)
    lengths = np.zeros((len(pairs), 2), np.int32)
    prompt_lengths = np.zeros((len(pairs),), np.int32)
    keep = np.ones((len(pairs),), bool)
    prompts_cut = responses_cut = identical = 0
    for i, pair in enumerate(pairs):
        prompt = encode_prompt(pair.prompt, tokenizer, prompt_template)
        if len(prompt) > max_prompt_length:
            prompt, prompts_cut = prompt[-max_prompt_length:], prompts_cut + 1
        budget = max_length - len(prompt) - 1  # room for response tokens before EOS
        sides = []
        for text in (pair.chosen, pair.rejected):
            response = _encode(tokenizer, text)
            if len(response) > budget:
                response, responses_cut = response[:budget], responses_cut + 1
            sides.append(prompt + response + [eos])
        if sides[0] == sides[1]:
            keep[i], identical = False, identical + 1
            continue
        prompt_lengths[i] = len(prompt)
        for side, ids in enumerate(sides):
            tokens[i, side, :len(ids)] = ids
            lengths[i, side] = len(ids)
    data = TokenizedPairs(tokens[keep], lengths[keep], prompt_lengths[keep])
    stats = TokenizeStats(len(pairs), int(keep.sum()), prompts_cut, responses_cut, identical)
    if identical:
        log.warning("dropped %d of %d pairs whose chosen and rejected are identical after "
                    "truncation", identical, len(pairs))
    return data, stats
