"""The files of a run's workdir besides checkpoints: what was run, and whether it may resume.

config.json, model_config.json, tokenizer/ and (for a pretrained start) hf_config.json make a
workdir self-contained: eval and export need nothing else. Only process 0 writes.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import ml_collections

from hafrm_jax.configuration import ConfigError
from hafrm_jax.hf.config import architecture_fields
from hafrm_jax.model.config import ModelConfig, from_dict, to_dict

log = logging.getLogger(__name__)

# Keys whose change makes a resumed run a different run (another objective, model, or the
# data: its pairs, their order, the validation hold-out, the tokens): refused unless allowed.
RESUME_CRITICAL = ("train.method", "train.batch_size", "train.seed", "data.source",
                   "data.files", "data.hub", "data.tfds", "data.splits", "data.options",
                   "data.on_error", "data.seed", "data.label_noise", "data.num_train",
                   "data.num_validation", "data.num_test", "data.validation_fraction",
                   "data.test_fraction", "data.max_train_pairs", "data.max_eval_pairs",
                   "data.max_length", "data.max_prompt_length", "data.chat_format",
                   "data.prompt_template", "data.bucket_batches", "model.name_or_path",
                   "model.lora")


def cache_directory(setting: str, workdir: str) -> str | None:
    """Where a cache setting (`train.compilation_cache_dir`, `data.cache_dir`) puts its files:
    a relative path inside the workdir, an absolute one (a cache shared by runs) as it is, ""
    nowhere (None)."""
    if not setting:
        return None
    return os.path.join(workdir, os.path.expanduser(setting))


def write_json(path: str, obj) -> None:
    """Atomically (write, then rename), on process 0 only."""
    if jax.process_index() != 0:
        return
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_json(path: str):
    """A run file written by `write_json`; a damaged one is refused naming the file and where."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno} "
                              f"({e.msg}); the file is damaged") from None


def flat_config(node: dict, prefix: str = "") -> dict:
    """{"a.b.c": value} of a nested config dict; every group is also listed under its own key."""
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        out[name] = value
    return out


def check_resume(config: ml_collections.ConfigDict, workdir: str,
                 model_config: ModelConfig) -> None:
    """Refuse to resume a workdir whose run had another model shape or another run-defining
    setting (RESUME_CRITICAL), unless train.allow_config_change; log the other changes."""
    config_path = os.path.join(workdir, "config.json")
    model_path = os.path.join(workdir, "model_config.json")
    if not (os.path.exists(config_path) and os.path.exists(model_path)):
        raise ConfigError(f"{workdir} has checkpoints but no config.json / model_config.json: "
                          "it was not written by this library, or was damaged")
    old = flat_config(read_json(config_path))
    old_model = from_dict(read_json(model_path))
    new = flat_config(json.loads(config.to_json()))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k)
                     and not isinstance(new.get(k, old.get(k)), dict))
    critical = [k for k in changed if k.startswith(RESUME_CRITICAL)]
    old_arch, new_arch = architecture_fields(old_model), architecture_fields(model_config)
    shape = sorted(k for k in new_arch if old_arch[k] != new_arch[k])
    if shape:
        critical.append(f"model architecture ({', '.join(shape)})")
    if critical and not config.train.allow_config_change:
        raise ConfigError(
            f"{workdir} holds a run with another configuration ({'; '.join(critical)}): it "
            "cannot be resumed as the same run. Use another --workdir, or pass "
            "--config.train.allow_config_change=true to resume anyway.")
    if changed:
        log.warning("resuming %s with changed settings: %s", workdir, changed)


DATA_FILE = "data.json"


def save_data_summary(workdir: str, prompt_format: str, sizes: dict[str, int],
                      read_counts: dict[str, dict]) -> None:
    """`data.json`: how the run's prompts came (chat turns or text: the scorer renders a
    plain-text prompt as the run was trained), its split sizes, and what was read, skipped and
    filtered per split."""
    if jax.process_index() != 0:
        return
    write_json(os.path.join(workdir, DATA_FILE),
               {"prompt_format": prompt_format, "pairs": sizes, "read": read_counts})


def saved_prompt_format(workdir: str) -> str | None:
    """The `prompt_format` of a workdir's data.json (None for a run from before it)."""
    path = os.path.join(workdir, DATA_FILE)
    return read_json(path)["prompt_format"] if os.path.exists(path) else None


def save_run_files(config: ml_collections.ConfigDict, workdir: str, tokenizer,
                   model_config: ModelConfig, hf_config: dict | None) -> None:
    if jax.process_index() != 0:
        return
    write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json()))
    write_json(os.path.join(workdir, "model_config.json"), to_dict(model_config))
    if hf_config is not None:
        write_json(os.path.join(workdir, "hf_config.json"), hf_config)
    tokenizer.save_pretrained(os.path.join(workdir, "tokenizer"))
