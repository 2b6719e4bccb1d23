"""Tokenizers of pretrained checkpoints, through transformers (never remote code)."""

from __future__ import annotations

import logging

from hafrm_jax.hf import gguf
from hafrm_jax.hf.config import UnsupportedModelError

log = logging.getLogger(__name__)


def load_tokenizer(directory: str):
    """AutoTokenizer of a checkpoint directory (or the tokenizer inside a GGUF file), with a
    pad token that is not EOS (see `ensure_pad_token`)."""
    if gguf.is_gguf(directory):
        tokenizer = gguf.load_gguf_tokenizer(directory)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    if tokenizer.eos_token_id is None:
        raise UnsupportedModelError(f"the tokenizer in {directory} has no EOS token, which "
                                    "every sequence ends with and where the reward is read")
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without one (or whose pad is its EOS) a pad token that is NOT its EOS
    where possible.

    Padding positions are masked in training, so any id would do there; but an exported
    `*ForSequenceClassification` model finds the last token as the last non-pad id, and a pad
    equal to EOS would make it read the reward one token early. Preference: the unk token, then
    an existing token whose name says pad, then a reserved special token, then EOS (warned).
    """
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    candidates = [tokenizer.unk_token] if tokenizer.unk_token else []
    candidates += sorted(t for t in vocab if "pad" in t.lower() and t.startswith("<"))
    candidates += sorted((t for t in vocab if "reserved" in t.lower()), key=lambda t: vocab[t])
    for token in candidates:
        if token is not None and token != tokenizer.eos_token:
            tokenizer.pad_token = token
            log.info("pad token set to %r (id %d)", token, tokenizer.pad_token_id)
            return
    if tokenizer.pad_token_id is not None:
        return  # already EOS, and nothing better to use
    tokenizer.pad_token = tokenizer.eos_token
    log.warning("the tokenizer has no pad, unk or reserved token: padding with EOS. Exported "
                "sequence-classification models will then read the reward before a final EOS")
