"""Trained models out: Hugging Face `<Family>ForSequenceClassification` (the reward model, with
`score` = our reward head) or `<Family>ForCausalLM` (the policy), as safetensors + config.json +
tokenizer files that transformers, trl, OpenRLHF and vLLM load unchanged.

The export is written to a temporary sibling directory and renamed into place when complete,
so a failed or interrupted export never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Literal

import jax
import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from hafrm_jax.hf.config import architecture_fields, hf_config_dict, model_config_from_hf
from hafrm_jax.hf.weights import iter_hf_tensors, tensor_maps
from hafrm_jax.model.config import ModelConfig

log = logging.getLogger(__name__)

CLASS_PREFIX = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3",
                "gemma": "Gemma", "gemma2": "Gemma2", "phi": "Phi"}
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_DROPPED_KEYS = ("architectures", "auto_map", "id2label", "label2id", "num_labels",
                 "problem_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path")
MAX_SHARD_BYTES = 4 * 2**30


def _hf_config(cfg: ModelConfig, head: str, tokenizer, base_config: dict | None, dtype: str):
    """transformers config object for the export, checked to describe exactly `cfg`."""
    from transformers import AutoConfig

    fields = {k: v for k, v in (base_config or {}).items() if k not in _DROPPED_KEYS}
    fields.update(hf_config_dict(cfg))
    prefix = CLASS_PREFIX[cfg.family]
    if head == "reward":
        fields.update(architectures=[f"{prefix}ForSequenceClassification"], num_labels=1)
    else:
        fields.update(architectures=[f"{prefix}ForCausalLM"])
    fields.update(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.bos_token_id, dtype=dtype)
    config = AutoConfig.for_model(**fields)
    described = architecture_fields(model_config_from_hf(config))
    mismatch = {k: (v, described[k]) for k, v in architecture_fields(cfg).items()
                if described[k] != v}
    if mismatch:  # a field the config cannot express: fail rather than export another model
        raise ValueError(f"the exported config would describe a different model: {mismatch}")
    return config


def export_peft_adapters(adapters: Any, cfg: ModelConfig, tokenizer, out_dir: str, *,
                         base_name_or_path: str | None, overwrite: bool = False) -> str:
    """LoRA adapters (and the reward head as `score`) in PEFT's layout: adapter_config.json +
    adapter_model.safetensors, loadable with `PeftModel.from_pretrained` onto the base model's
    `<Family>ForSequenceClassification`."""
    if cfg.lora is None:
        raise ValueError("not a LoRA model")
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists; choose another --out or pass --overwrite")
    rename = {"o_proj": "dense"} if cfg.family == "phi" else {}
    tensors: dict[str, np.ndarray] = {}
    for keys, value in jax.tree_util.tree_flatten_with_path(adapters["lora"])[0]:
        path = tuple(k.key for k in keys)  # (..., "layers", block, "<name>_lora", "a" | "b")
        layer = path[-2][: -len("_lora")]
        module = "model.layers.{i}." + ".".join(path[2:-2] + (rename.get(layer, layer),))
        array = np.asarray(jax.device_get(value), np.float32)
        for i in range(array.shape[0]):
            side = "lora_A" if path[-1] == "a" else "lora_B"
            tensors[f"base_model.model.{module.format(i=i)}.{side}.weight"] = \
                np.ascontiguousarray(array[i].T)
    score = np.asarray(jax.device_get(adapters["reward_head"]["kernel"]), np.float32)
    tensors["base_model.model.score.weight"] = np.ascontiguousarray(score.T)
    adapter_config = {
        "peft_type": "LORA", "task_type": "SEQ_CLS", "r": cfg.lora.rank,
        "lora_alpha": cfg.lora.alpha, "lora_dropout": cfg.lora.dropout,
        "target_modules": sorted(rename.get(t, t) for t in cfg.lora.targets),
        "modules_to_save": ["score"], "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "use_rslora": False,
        "use_dora": False, "base_model_name_or_path": base_name_or_path,
    }
    tmp = out_dir.rstrip("/") + ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
        json.dump(adapter_config, f, indent=2)
    tokenizer.save_pretrained(tmp)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log.info("exported LoRA adapters (rank %d, %d tensors) to %s", cfg.lora.rank, len(tensors),
             out_dir)
    return out_dir


def _plan_shards(sizes: list[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    shards, current, total = [], [], 0
    for name, size in sizes:
        if current and total + size > max_bytes:
            shards.append(current)
            current, total = [], 0
        current.append(name)
        total += size
    return shards + ([current] if current else [])


def export_checkpoint(
    params: Any,
    cfg: ModelConfig,
    tokenizer,
    out_dir: str,
    *,
    head: Literal["reward", "policy"] = "reward",
    base_config: dict | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> str:
    """Write `params` as a Hugging Face checkpoint in `out_dir`; returns `out_dir`.

    head="reward": `<Family>ForSequenceClassification`, num_labels=1, score = reward head.
    head="policy": `<Family>ForCausalLM` with the trained LM head.
    base_config: the imported checkpoint's config.json, whose other fields are kept.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists; choose another --out or pass --overwrite")
    config = _hf_config(cfg, head, tokenizer, base_config, dtype)
    np_dtype = DTYPES[dtype]
    with_lm_head = head == "policy" and not cfg.tie_embeddings
    itemsize = np.dtype(np_dtype).itemsize
    sizes = []
    for tmap, leaf in zip(tensor_maps(params, cfg), jax.tree_util.tree_leaves(params)):
        per = leaf.size // (leaf.shape[0] if tmap.stacked else 1) * itemsize
        if (tmap.path[0] == "reward_head" and head != "reward") or (
                tmap.path[0] == "lm_head" and not with_lm_head):
            continue
        names = ([tmap.hf_name.format(i=i) for i in range(leaf.shape[0])] if tmap.stacked
                 else [tmap.hf_name])
        sizes += [(n, per) for n in names]
    shards = _plan_shards(sizes, max_shard_bytes)
    files = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    shard_of = {name: i for i, names in enumerate(shards) for name in names}

    tmp = out_dir.rstrip("/") + ".tmp-export"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    pending: dict[int, dict[str, np.ndarray]] = {}
    remaining = {i: len(names) for i, names in enumerate(shards)}
    for name, array in iter_hf_tensors(params, cfg, np_dtype, with_reward_head=head == "reward",
                                       with_lm_head=with_lm_head):
        i = shard_of[name]
        pending.setdefault(i, {})[name] = array
        remaining[i] -= 1
        if remaining[i] == 0:  # a shard is complete: write it and free its memory
            save_file(pending.pop(i), os.path.join(tmp, files[i]), metadata={"format": "pt"})
    if len(files) > 1:
        index = {"metadata": {"total_size": sum(s for _, s in sizes)},
                 "weight_map": {name: files[i] for name, i in shard_of.items()}}
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log.info("exported %s (%s, %d file(s)) to %s", config.architectures[0], dtype, len(files),
             out_dir)
    return out_dir
