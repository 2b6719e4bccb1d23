"""Tokenised splits kept on disk, so that running again on the same data (a resume after a
preemption, another method or seed on the same pairs) reads its splits instead of tokenising
them again.

Every host of a run tokenises the whole training split at start-up, again on every resume:
41 s for 161k HH-RLHF pairs on 2 cores, against 1.3 s to read them back (bench/RESULTS.md).
A cached split is a safetensors file (arrays only: nothing in it is executed) named by a
sha256 over everything its arrays follow from:
- the pairs as read (prompt, chosen, rejected) and their positions in the split;
- the tokenizer's saved files (vocabulary, merges, special tokens, chat template);
- the tokenisation settings (`max_length`, `max_prompt_length`, `chat_format`,
  `prompt_template`);
- the source of `hafrm_jax.data.tokenize` and the transformers and tokenizers versions.
Any change gives another name, so a stale split is never read; the records are still read and
hashed, since the name is made from them. A file that cannot be read back whole is warned
about and the split tokenised again. Files are written whole, then renamed into place.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import tempfile
import time

import numpy as np
import tokenizers
import transformers
from safetensors import safe_open
from safetensors.numpy import save_file

from hafrm_jax.data import tokenize
from hafrm_jax.data.records import PreferencePair
from hafrm_jax.data.tokenize import TokenizedPairs, TokenizeStats

log = logging.getLogger(__name__)

FORMAT = 1  # of the files; bumped if their layout changes


@dataclasses.dataclass(frozen=True)
class TokenizeSettings:
    """What `tokenize_pairs` is called with besides the pairs and the tokenizer."""

    max_length: int
    max_prompt_length: int
    chat_format: str = "auto"
    prompt_template: str = "{prompt}"


@functools.cache
def _code_digest() -> str:
    with open(tokenize.__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """sha256 over the files `save_pretrained` writes for the tokenizer: two tokenizers that
    save the same files tokenise the same way."""
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        for name in sorted(os.listdir(directory)):
            with open(os.path.join(directory, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


def split_key(pairs: list[PreferencePair], indices: np.ndarray, tokenizer_key: str,
              settings: TokenizeSettings) -> str:
    """The name of a split's file: sha256 over its pairs, their positions, the tokenizer's
    digest, the settings, and the code and library versions that tokenise."""
    header = {"format": FORMAT, "code": _code_digest(), "tokenizer": tokenizer_key,
              "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
              **dataclasses.asdict(settings)}
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(indices, np.int64).tobytes())
    for pair in pairs:  # repr: a prompt may be chat turns; quotes and escapes keep fields apart
        digest.update(repr((pair.prompt, pair.chosen, pair.rejected)).encode())
    return digest.hexdigest()


def cache_path(directory: str, split: str, key: str) -> str:
    return os.path.join(directory, f"{split}-{key}.safetensors")


def save_split(path: str, key: str, data: TokenizedPairs, stats: TokenizeStats,
               pad_id: int) -> None:
    """Write the split's real tokens (padding is rebuilt on reading), then rename into place:
    a kill while writing leaves a temporary file, never a cut cache file."""
    real = np.arange(data.tokens.shape[-1]) < data.lengths[..., None]  # [pairs, 2, seq]
    arrays = {"tokens": data.tokens[real], "lengths": data.lengths,
              "prompt_lengths": data.prompt_lengths, "index": data.index}
    metadata = {"key": key, "format": str(FORMAT), "max_length": str(data.tokens.shape[-1]),
                "pad_id": str(pad_id), "stats": json.dumps(dataclasses.asdict(stats))}
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata)
        os.replace(tmp, path)
    except OSError as e:  # a full or read-only disk costs the next run a tokenisation only
        log.warning("could not write the tokenised split %s (%s); continuing without it", path, e)
        if os.path.exists(tmp):
            os.remove(tmp)


def load_split(path: str, key: str) -> tuple[TokenizedPairs, TokenizeStats] | None:
    """The split written by `save_split` under `key`, or None when there is none, or it cannot
    be read back whole (warned about)."""
    if not os.path.exists(path):
        return None
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            arrays = {name: f.get_tensor(name) for name in f.keys()}
        if meta.get("key") != key or meta.get("format") != str(FORMAT):
            raise ValueError("written for other data or by another version")
        lengths = arrays["lengths"]
        tokens = np.full(lengths.shape + (int(meta["max_length"]),), int(meta["pad_id"]),
                         np.int32)
        # Raises if the lengths and the stored tokens disagree (a damaged file).
        tokens[np.arange(tokens.shape[-1]) < lengths[..., None]] = arrays["tokens"]
        data = TokenizedPairs(tokens, lengths, arrays["prompt_lengths"], arrays["index"])
        if not (len(data.prompt_lengths) == len(data.index) == len(data)):
            raise ValueError(f"arrays of {len(data)}, {len(data.prompt_lengths)} and "
                             f"{len(data.index)} pairs")
        return data, TokenizeStats(**json.loads(meta["stats"]))
    except Exception as e:  # noqa: BLE001 (any damage: the split is tokenised again)
        log.warning("%s cannot be read back (%s: %s); tokenising the split again", path,
                    type(e).__name__, e)
        return None


def tokenize_cached(pairs: list[PreferencePair], tokenizer, settings: TokenizeSettings,
                    indices: np.ndarray, directory: str | None, split: str,
                    write: bool = True, tokenizer_key: str | None = None
                    ) -> tuple[TokenizedPairs, TokenizeStats]:
    """`tokenize_pairs(pairs, ...)`, read from `directory` when it holds this split for these
    pairs, tokenizer and settings, else tokenised (and written there when `write`).
    `directory` None: no cache. `tokenizer_key`: `tokenizer_digest(tokenizer)`, when the
    caller has it already."""
    def run() -> tuple[TokenizedPairs, TokenizeStats]:
        return tokenize.tokenize_pairs(pairs, tokenizer, settings.max_length,
                                       settings.max_prompt_length, settings.chat_format,
                                       settings.prompt_template, indices=indices)

    if directory is None:
        return run()
    key = split_key(pairs, indices, tokenizer_key or tokenizer_digest(tokenizer), settings)
    path = cache_path(directory, split, key)
    started = time.perf_counter()
    cached = load_split(path, key)
    if cached is not None:
        log.info("%s: %d tokenised pairs read from %s in %.1fs", split, len(cached[0]), path,
                 time.perf_counter() - started)
        return cached
    data, stats = run()
    if write:
        save_split(path, key, data, stats, tokenize.pad_id(tokenizer))
    return data, stats
