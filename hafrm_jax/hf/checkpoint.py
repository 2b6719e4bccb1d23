"""Pretrained checkpoints in: `model.name_or_path` -> (ModelConfig, sharded params, tokenizer)."""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any

from hafrm_jax.hf import gguf
from hafrm_jax.hf.config import UnsupportedModelError, load_hf_config, model_config_from_hf
from hafrm_jax.hf.weights import CheckpointFiles, load_params
from hafrm_jax.model.config import ModelConfig
from hafrm_jax.train.state import count_params

log = logging.getLogger(__name__)

_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]


def resolve_checkpoint(name_or_path: str, setting: str = "model.name_or_path") -> str:
    """A local checkpoint: a directory, a .gguf file (or the short name of a packaged one), or
    a hub download when online. Errors name `setting`, where the user gave `name_or_path`."""
    known = gguf.find_known_file(name_or_path)
    if known is not None:
        return known
    if gguf.is_gguf(name_or_path):
        if not os.path.isfile(name_or_path):
            raise FileNotFoundError(f"{setting}={name_or_path!r}: no such file")
        return name_or_path
    if os.path.isdir(name_or_path):
        if not os.path.exists(os.path.join(name_or_path, "config.json")):
            raise FileNotFoundError(f"{name_or_path} has no config.json: not a Hugging Face "
                                    "checkpoint directory")
        return name_or_path
    if os.path.exists(name_or_path) or name_or_path.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{setting}={name_or_path!r} is not a directory")
    from huggingface_hub import snapshot_download

    log.info("downloading %s from the Hugging Face hub (safetensors only)", name_or_path)
    try:
        directory = snapshot_download(name_or_path, allow_patterns=_DOWNLOAD_PATTERNS)
    except Exception as e:  # offline, unknown repo, gated model, ...
        raise FileNotFoundError(
            f"{setting}={name_or_path!r} is neither a local directory nor a hub "
            f"model that could be downloaded ({type(e).__name__}: {e})") from e
    if not glob.glob(os.path.join(directory, "*.safetensors")):
        # the patterns leave pickled weights on the hub: say so, not "no safetensors" alone
        from huggingface_hub import list_repo_files

        pickled = [f for f in list_repo_files(name_or_path) if f.endswith((".bin", ".pt"))]
        what = (f"only PyTorch pickle weights ({', '.join(pickled[:3])}), which are never "
                "loaded here (unpickling can run code); convert them to safetensors first, "
                "or use a repo that has safetensors") if pickled else "no safetensors weights"
        raise FileNotFoundError(f"hub model {name_or_path!r} has {what}")
    return directory


def pretrained_model_config(directory: str, **execution: Any) -> ModelConfig:
    """Our ModelConfig for a checkpoint directory or GGUF file; what it cannot express is
    refused, naming the file."""
    if gguf.is_gguf(directory):
        return gguf.gguf_model_config(directory, **execution)
    try:
        return model_config_from_hf(load_hf_config(directory), **execution)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{os.path.join(directory, 'config.json')}: {e}") from e


def checkpoint_heads(directory: str, model_config: ModelConfig) -> tuple[bool, bool]:
    """(has a reward head, has a policy head) of a checkpoint: a `score` tensor (a
    sequence-classification export) and an LM head (`lm_head.weight`, or tied embeddings).
    Loading fills a missing head (zeros; the input embedding), so this says which are real."""
    if gguf.is_gguf(directory):  # a language model: its output head or tied embeddings
        return False, True
    files = CheckpointFiles(directory)
    try:
        return "score.weight" in files, model_config.tie_embeddings or "lm_head.weight" in files
    finally:
        files.close()


def load_pretrained_params(directory: str, model_config: ModelConfig, shardings: Any,
                           abstract: Any) -> Any:
    """Params streamed from `directory` onto `shardings` (see `hafrm_jax.hf.weights`), or
    dequantised from a GGUF file."""
    if gguf.is_gguf(directory):
        params = gguf.load_gguf_params(directory, model_config, shardings, abstract)
    else:
        params = load_params(directory, model_config, shardings, abstract)
    log.info("loaded %s (%.1fM params)", directory, count_params(params) / 1e6)
    return params


def original_hf_config(directory: str) -> dict | None:
    """The checkpoint's config.json (None for a GGUF: exports then describe the model anew)."""
    if gguf.is_gguf(directory):
        return None
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        return json.load(f)

