"""Token-level preference pairs: prompt + response + EOS per side, with the masks derived.

`TokenizedPairs` keeps a split as dense numpy arrays ([pairs, 2, seq], right-padded), so that
batching, label noise and reference log-probs are cheap array operations.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator

import numpy as np

from hafrm_jax.data.records import PreferencePair

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TokenizedPairs:
    """A split of tokenised pairs; side 0 is the chosen response, side 1 the rejected one."""

    tokens: np.ndarray  # [pairs, 2, max_length] int32, prompt + response + EOS, right-padded
    lengths: np.ndarray  # [pairs, 2] int32, real tokens per sequence
    prompt_lengths: np.ndarray  # [pairs] int32, prompt tokens (shared by both sides)
    index: np.ndarray  # [pairs] int64, each pair's position in its split as read
    ref_logps: np.ndarray | None = None  # [pairs, 2] float32, frozen starting model's log-probs

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def take(self, rows: np.ndarray) -> "TokenizedPairs":
        """The pairs at positions `rows` of this split (their split positions kept in `index`)."""
        return TokenizedPairs(self.tokens[rows], self.lengths[rows], self.prompt_lengths[rows],
                              self.index[rows],
                              None if self.ref_logps is None else self.ref_logps[rows])

    def with_swapped(self, indices: np.ndarray) -> "TokenizedPairs":
        """A copy in which the pairs at `indices` have chosen and rejected exchanged."""
        ref_logps = None if self.ref_logps is None else self.ref_logps.copy()
        out = dataclasses.replace(self, tokens=self.tokens.copy(), lengths=self.lengths.copy(),
                                  ref_logps=ref_logps)
        for array in (out.tokens, out.lengths) + (() if ref_logps is None else (ref_logps,)):
            array[indices] = array[indices][:, ::-1]
        return out


@dataclasses.dataclass(frozen=True)
class TokenizeStats:
    pairs_in: int
    pairs_out: int
    prompts_truncated: int
    responses_truncated: int
    identical_dropped: int  # chosen == rejected after truncation: no preference left to learn


CHAT_FORMATS = ("auto", "tokenizer", "hh")
_HH_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}


def resolved_chat_format(tokenizer, chat_format: str) -> str:
    """"auto": the tokenizer's chat template where it has one, else the HH-RLHF format."""
    if chat_format not in CHAT_FORMATS:
        raise ValueError(f"chat_format={chat_format!r}: expected one of {CHAT_FORMATS}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat_format == "tokenizer" and not has_template:
        raise ValueError("chat_format='tokenizer' but the tokenizer has no chat template")
    if chat_format == "auto":
        return "tokenizer" if has_template else "hh"
    return chat_format


def prompt_text(prompt, tokenizer, chat_format: str, prompt_template: str = "{prompt}") -> str:
    """Chat turns rendered by the tokenizer's chat template or in the HH-RLHF format
    ("\n\nHuman: ...\n\nAssistant:"); plain-text prompts through `prompt_template`."""
    if isinstance(prompt, str):
        return prompt_template.format(prompt=prompt)
    if resolved_chat_format(tokenizer, chat_format) == "tokenizer":
        return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    turns = "".join(f"\n\n{_HH_ROLES.get(m['role'], m['role'])}: {m['content']}" for m in prompt)
    return turns + "\n\nAssistant:"


def _encode_all(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each text's ids, without special tokens, from one call: a fast tokenizer encodes a batch
    on all of its threads (`tokenize_pairs` on 1,794 HH pairs with SmolLM2's tokenizer: 1.6x
    the pairs a second of one call a text on 2 cores, 1.03x on one thread;
    bench/tokenize_speed.py, bench/RESULTS.md)."""
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def sequence_start_token(tokenizer) -> int | None:
    """The BOS id where the tokenizer itself starts every sequence with it (Llama, Mistral,
    Gemma), else None: a `bos_token` the tokenizer never adds (SmolLM2's is its chat-turn
    opener <|im_start|>; Qwen has none) is not put first by us either."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    return bos if list(tokenizer("a", add_special_tokens=True)["input_ids"][:1]) == [bos] \
        else None


def pad_id(tokenizer) -> int:
    """The id that fills a sequence after its EOS: the tokenizer's pad token, else EOS (never
    read: masks and lengths say where a sequence ends)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id


# Items (pairs, or prompt-response rows) encoded per tokenizer call: enough for every core, and
# host memory bounded by the chunk (Python lists of ids cost ~36 bytes a token).
ENCODE_CHUNK = 1024


def _encoded(prompts: list, responses: list[list[str]], tokenizer, chat_format: str,
             prompt_template: str, bos: int | None
             ) -> Iterator[tuple[list[int], tuple[list[int], ...]]]:
    """Per item i, its prompt's ids (`bos` first where the text lacks it; see
    `sequence_start_token`) and the ids of each of its responses (`responses[k][i]`, no EOS
    yet), encoded `ENCODE_CHUNK` items a call."""
    for start in range(0, len(prompts), ENCODE_CHUNK):
        chunk = slice(start, start + ENCODE_CHUNK)
        texts = [prompt_text(prompt, tokenizer, chat_format, prompt_template)
                 for prompt in prompts[chunk]]
        prompt_ids = [[bos] + ids if bos is not None and ids[:1] != [bos] else ids
                      for ids in _encode_all(tokenizer, texts)]
        # In the HH format a response follows "Assistant:" after a space, as in the original.
        space = " " if resolved_chat_format(tokenizer, chat_format) == "hh" else ""
        sides = [_encode_all(tokenizer, [(space if isinstance(prompt, list) else "") + text
                                         for prompt, text in zip(prompts[chunk], side[chunk])])
                 for side in responses]
        yield from zip(prompt_ids, zip(*sides))


def _fit(prompt: list[int], response: list[int], eos: int, max_length: int,
         max_prompt_length: int, bos: int | None = None) -> tuple[list[int], list[int], bool, bool]:
    """(prompt, response + [eos]) cut to the limits; and whether each was cut. A prompt cut from
    the left keeps its leading `bos` (the sequence-start token of `sequence_start_token`: the
    models are trained with it first)."""
    prompt_cut = len(prompt) > max_prompt_length
    if prompt_cut:
        keep_bos = bos is not None and prompt[:1] == [bos]
        prompt = [bos] + prompt[len(prompt) - max_prompt_length + 1:] if keep_bos \
            else prompt[-max_prompt_length:]
    budget = max_length - len(prompt) - 1
    response_cut = len(response) > budget
    return prompt, response[:budget] + [eos], prompt_cut, response_cut


def tokenize_responses(prompts: list, responses: list[str], tokenizer, max_length: int,
                       max_prompt_length: int, chat_format: str = "auto",
                       prompt_template: str = "{prompt}") -> TokenizedPairs:
    """One sequence per (prompt, response), as TokenizedPairs with a single side [n, 1, seq],
    truncated like `tokenize_pairs`; nothing is dropped, so scores align with the input."""
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be below max_length "
                         f"({max_length})")
    eos = tokenizer.eos_token_id
    tokens = np.full((len(prompts), 1, max_length), pad_id(tokenizer), np.int32)
    lengths = np.zeros((len(prompts), 1), np.int32)
    prompt_lengths = np.zeros((len(prompts),), np.int32)
    bos = sequence_start_token(tokenizer)
    encoded = _encoded(prompts, [responses], tokenizer, chat_format, prompt_template, bos)
    for i, (full_prompt, (response,)) in enumerate(encoded):
        prompt_ids, response_ids, _, _ = _fit(full_prompt, response, eos, max_length,
                                              max_prompt_length, bos)
        ids = prompt_ids + response_ids
        tokens[i, 0, :len(ids)], lengths[i, 0], prompt_lengths[i] = ids, len(ids), len(prompt_ids)
    return TokenizedPairs(tokens, lengths, prompt_lengths, np.arange(len(prompts)))


def tokenize_pairs(
    pairs: list[PreferencePair],
    tokenizer,
    max_length: int,
    max_prompt_length: int,
    chat_format: str = "auto",
    prompt_template: str = "{prompt}",
    indices: np.ndarray | None = None,
) -> tuple[TokenizedPairs, TokenizeStats]:
    """Tokenise pairs: the prompt is cut from the left to `max_prompt_length`, each response from
    the right to fill `max_length`; EOS is appended after the cut, so every sequence ends in EOS
    and the reward is always read on it. `indices` are the pairs' positions in their split
    (default 0, 1, ...), kept through drops so that every host agrees on which pair is which."""
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be below max_length "
                         f"({max_length}) to leave room for a response")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; set one (tokenizer.eos_token) first")
    tokens = np.full((len(pairs), 2, max_length), pad_id(tokenizer), np.int32)
    lengths = np.zeros((len(pairs), 2), np.int32)
    prompt_lengths = np.zeros((len(pairs),), np.int32)
    keep = np.ones((len(pairs),), bool)
    prompts_cut = responses_cut = identical = 0
    bos = sequence_start_token(tokenizer)
    encoded = _encoded([pair.prompt for pair in pairs],
                       [[pair.chosen for pair in pairs], [pair.rejected for pair in pairs]],
                       tokenizer, chat_format, prompt_template, bos)
    for i, (full_prompt, responses) in enumerate(encoded):
        sides = []
        for response_ids in responses:
            prompt, response, prompt_cut, response_cut = _fit(
                full_prompt, response_ids, eos, max_length, max_prompt_length, bos)
            responses_cut += response_cut
            sides.append(prompt + response)
        prompts_cut += prompt_cut
        if sides[0] == sides[1]:
            keep[i], identical = False, identical + 1
            continue
        prompt_lengths[i] = len(prompt)
        for side, ids in enumerate(sides):
            tokens[i, side, :len(ids)] = ids
            lengths[i, side] = len(ids)
    indices = np.arange(len(pairs)) if indices is None else np.asarray(indices)
    data = TokenizedPairs(tokens[keep], lengths[keep], prompt_lengths[keep],
                          indices[keep].astype(np.int64))
    stats = TokenizeStats(len(pairs), int(keep.sum()), prompts_cut, responses_cut, identical)
    if identical:
        log.warning("dropped %d of %d pairs whose chosen and rejected are identical after "
                    "truncation", identical, len(pairs))
    return data, stats
