"""Reading a finished (or running) training workdir back: config, model, params, tokenizer.

Everything comes from files the run wrote (config.json, model_config.json, tokenizer/,
hf_config.json, orbax checkpoints), so export and evaluation need no network and no data.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

import jax
import ml_collections

from hafrm_jax import configuration
from hafrm_jax.checkpoint import RunCheckpoints
from hafrm_jax.hf.checkpoint import resolve_checkpoint
from hafrm_jax.model.config import LoraConfig, ModelConfig, from_dict
from hafrm_jax.model.lora import COLLECTION, merge_adapters, model_variables, split_trainable
from hafrm_jax.sharding import Rules, make_mesh
from hafrm_jax.train.optimizer import make_optimizer
from hafrm_jax.train.run_files import read_json
from hafrm_jax.train.state import (abstract_params, abstract_train_state, init_params,
                                   param_shardings, state_shardings)


@dataclasses.dataclass
class Run:
    config: ml_collections.ConfigDict
    model_config: ModelConfig
    params: Any
    tokenizer: Any
    step: int  # the step the params are from
    hf_config: dict | None  # the pretrained checkpoint's config.json, if the run started from one
    adapters: Any = None  # LoRA runs: the trained {"lora", heads} tree (params are merged)
    lora: LoraConfig | None = None  # ... and its configuration


def load_run(workdir: str, which: Literal["best", "latest"] = "best", mesh=None,
             rules: Rules | None = None) -> Run:
    """The params of `workdir`: the best by validation accuracy, or the latest checkpoint.

    For a LoRA run the base is rebuilt as training started from it (the pretrained checkpoint,
    or the same random initialisation) and the adapters are merged in: `params` is then a plain
    full model (`model_config.lora` None), and `adapters` holds the trained tree.
    """
    for name in ("config.json", "model_config.json"):
        if not os.path.exists(os.path.join(workdir, name)):
            raise FileNotFoundError(f"{workdir} is not a training workdir: it has no {name}")
    config = ml_collections.ConfigDict(read_json(os.path.join(workdir, "config.json")))
    model_config = from_dict(read_json(os.path.join(workdir, "model_config.json")))
    mesh = mesh or make_mesh()
    rules = rules or configuration.logical_rules(config)
    shardings = param_shardings(model_config, mesh, rules)
    shapes = abstract_params(model_config)
    lora = model_config.lora
    if lora is not None:  # checkpoints hold the trainable tree only
        train_lm_head = config.model.lora.train_lm_head
        shapes = split_trainable(shapes, abstract_params(model_config, COLLECTION),
                                 train_lm_head)[0]
        shardings = split_trainable(shardings, param_shardings(model_config, mesh, rules,
                                                               COLLECTION), train_lm_head)[0]
    abstract = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    checkpoints = RunCheckpoints(workdir, keep=config.train.keep_checkpoints)
    try:
        if which == "best":
            if checkpoints.best_step() is None:
                raise FileNotFoundError(f"{workdir} has no best checkpoint yet")
            params, meta = checkpoints.restore_best(abstract)
            step = meta["step"]
        else:
            step = checkpoints.latest_step()
            if step is None:
                raise FileNotFoundError(f"{workdir} has no checkpoint yet")
            optimizer, _ = make_optimizer(config.optim, config.train.steps)
            state_sh = state_shardings(optimizer, shardings, shapes, mesh)
            abstract_state = jax.tree_util.tree_map(
                lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                abstract_train_state(optimizer, shapes), state_sh)
            state, _ = checkpoints.restore(step, abstract_state)
            params = state.params
    finally:
        checkpoints.close()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(os.path.join(workdir, "tokenizer"))
    hf_path = os.path.join(workdir, "hf_config.json")
    hf_config = read_json(hf_path) if os.path.exists(hf_path) else None
    adapters = None
    if lora is not None:
        base = starting_params(config, model_config, mesh, rules)
        adapters = params
        variables = model_variables(adapters, base)  # the base with the trained heads put back
        params = merge_adapters(variables["params"], variables[COLLECTION], model_config)
        model_config = dataclasses.replace(model_config, lora=None)
    return Run(config, model_config, params, tokenizer, step, hf_config, adapters, lora)


def starting_params(config: ml_collections.ConfigDict, model_config: ModelConfig, mesh,
                    rules: Rules) -> Any:
    """The params a run started from (its pretrained checkpoint, or the same random
    initialisation): the DPO reference, and a LoRA run's base. For a LoRA run that stored its
    frozen base in model.lora.base_dtype, the frozen part is rounded to it (and kept in its own
    dtype), as the run computed with it; the heads it trained are left as they started."""
    start = config.model.name_or_path
    params, _ = init_params(model_config, config.train.seed, mesh, rules,
                            resolve_checkpoint(start) if start else None)
    lora = config.model.lora
    if lora.rank == 0 or not lora.get("base_dtype"):
        return params
    dtype = jax.numpy.dtype(lora.base_dtype)
    trained, frozen = split_trainable(params, {}, lora.train_lm_head)  # as training splits it
    rounded = jax.tree_util.tree_map(lambda x: x.astype(dtype).astype(x.dtype), frozen)
    return model_variables(trained, rounded)["params"]
