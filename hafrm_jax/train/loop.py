"""The training entry point: `train_and_evaluate(config, workdir)`.

Reads top to bottom: config -> data -> mesh and state -> reference log-probs -> resume -> loop
(log, validate, checkpoint) -> test the best-by-validation params once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from hafrm_jax import configuration, reference
from hafrm_jax.checkpoint import RunCheckpoints, abstract_like
from hafrm_jax.data.batching import EpochSampler, make_batch
from hafrm_jax.data.pipeline import PreparedData, load_tokenizer, prepare_data
from hafrm_jax.evaluation import eval_batch_size, make_score_fn, pair_metrics, score_pairs
from hafrm_jax.hf.checkpoint import original_hf_config, resolve_checkpoint
from hafrm_jax.model.config import ModelConfig
from hafrm_jax.model.config import to_dict as model_config_to_dict
from hafrm_jax.sharding import (batch_sharding, data_parallel_size, host_batch_to_global,
                                make_mesh, process_rows)
from hafrm_jax.train.metrics_writer import MetricsWriter
from hafrm_jax.train.optimizer import make_optimizer
from hafrm_jax.train.state import TrainState, create_train_state, init_params
from hafrm_jax.train.step import train_step

log = logging.getLogger(__name__)

StopCondition = Callable[[int], bool]


class _StopOnSignal:
    """SIGTERM (preemption notice) or SIGINT: finish the current step, checkpoint, exit."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals to the caller
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass
class RunResult:
    workdir: str
    step: int
    completed: bool  # False when stopped early (signal or stop condition)
    best_step: int | None
    validation: dict[str, float] | None
    test: dict[str, float] | None
    state: TrainState | None = None  # the final train state (params, optimizer state, ...)


def _write_json(path: str, obj) -> None:
    if jax.process_index() == 0:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
        os.replace(tmp, path)


def _save_run_files(config, workdir: str, tokenizer, model_config: ModelConfig,
                    pretrained: str | None) -> None:
    """config.json, model_config.json, the tokenizer and (for a pretrained start) the original
    hf_config.json: eval and export then need nothing but the workdir."""
    if jax.process_index() != 0:
        return
    _write_json(os.path.join(workdir, "model_config.json"), model_config_to_dict(model_config))
    if pretrained is not None:
        _write_json(os.path.join(workdir, "hf_config.json"), original_hf_config(pretrained))
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
        if previous != json.loads(config.to_json()):
            log.warning("config differs from the one that started %s; continuing with the new "
                        "one", workdir)
    _write_json(path, json.loads(config.to_json()))
    tokenizer.save_pretrained(os.path.join(workdir, "tokenizer"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_condition: StopCondition | None = None) -> RunResult:
    """Train with `config` in `workdir`, resuming from its latest checkpoint if there is one.

    `stop_condition(step)` lets a caller end the run early after a step (it is checkpointed
    first), as a preemption signal does.
    """
    configuration.validate(config)
    os.makedirs(workdir, exist_ok=True)
    t = config.train
    pretrained = resolve_checkpoint(config.model.name_or_path) if config.model.name_or_path \
        else None
    loss_config = configuration.loss_config(config, pretrained)
    objective = loss_config.objective

    # Data.
    tokenizer = load_tokenizer(config, pretrained)
    if len(tokenizer) > loss_config.model.vocab_size:
        raise configuration.ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is "
            f"{loss_config.model.vocab_size}")
    data: PreparedData = prepare_data(config, tokenizer)
    _save_run_files(config, workdir, tokenizer, loss_config.model, pretrained)
    splits = data.splits
    for name, split in splits.items():
        log.info("%s: %d pairs, %d tokens", name, len(split), split.num_tokens())

    # Mesh, optimizer, state.
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    rules = configuration.logical_rules(config)
    dp = data_parallel_size(mesh, rules)
    micro = t.batch_size // t.grad_accum_steps
    if micro % dp or t.batch_size % jax.process_count():
        raise configuration.ConfigError(
            f"train.batch_size / train.grad_accum_steps = {micro} pairs must be divisible by the "
            f"data-parallel size {dp} (mesh {dict(mesh.shape)})")
    optimizer, schedule = make_optimizer(config.optim, t.steps)
    params, params_sh = init_params(loss_config.model, t.seed, mesh, rules, pretrained)
    state, state_sh = create_train_state(params, params_sh, optimizer, t.seed, mesh)
    eval_bs = eval_batch_size(t.eval_batch_size, mesh, rules)
    score = functools.partial(score_pairs, batch_size=eval_bs,
                              pad_to_multiple=config.data.pad_to_multiple, mesh=mesh, rules=rules)

    # Reference log-probs of the starting params, once per example (cached in the workdir).
    # With reference="online" the training split's come from a frozen copy at every step instead.
    ref_params = None
    if objective.uses_policy:
        cached = [n for n in splits if not (n == "train" and objective.reference == "online")]
        key = reference.fingerprint({n: splits[n] for n in cached},
                                    {"model": repr(loss_config.model), "seed": t.seed,
                                     "pretrained": config.model.name_or_path})
        refs = reference.load_cache(workdir, key)
        if refs is None:
            logp_fn = make_score_fn(loss_config.model, mesh, rules, with_rewards=False,
                                    with_logprobs=True)
            started = time.time()
            refs = {n: score(logp_fn, state.params, splits[n])["logps"] for n in cached}
            log.info("reference log-probs: %d pairs in %.1fs", sum(map(len, refs.values())),
                     time.time() - started)
            if jax.process_index() == 0:
                reference.save_cache(workdir, refs, key)
        for name in cached:
            splits[name].ref_logps = refs[name]
        if objective.reference == "online":
            ref_params = jax.tree_util.tree_map(lambda x: x.copy(), state.params)

    # Resume.
    checkpoints = RunCheckpoints(workdir, t.keep_checkpoints)
    start = checkpoints.latest_step() or 0
    checkpoints.discard_best_after(start)  # written after the state we resume: stale
    best_score = -np.inf
    if start:
        state, meta = checkpoints.restore(start, abstract_like(state))
        best_score = meta["best_validation_accuracy"]
        log.info("resumed from step %d of %s", start, workdir)
    writer = MetricsWriter(workdir, resume_step=start)

    step_fn = jax.jit(
        functools.partial(train_step, loss_config=loss_config, optimizer=optimizer,
                          schedule=schedule, grad_accum_steps=t.grad_accum_steps),
        donate_argnums=0,
    )
    score_fn = make_score_fn(loss_config.model, mesh, rules, with_rewards=objective.uses_rewards,
                             with_logprobs=objective.uses_policy)
    primary = "implicit" if objective.method == "dpo" else "reward"

    def evaluate(params, split_name):
        split = splits[split_name]
        scores = score(score_fn, params, split)
        return pair_metrics(scores.get("rewards"), scores.get("logps"), split.ref_logps,
                            objective.beta, primary)

    sampler = EpochSampler(len(splits["train"]), t.batch_size, t.seed)
    sharding = batch_sharding(mesh, rules)
    rows = process_rows(t.batch_size)
    pending: list[dict] = []
    validation = None
    step = start
    bar = tqdm(total=t.steps, initial=start, desc=f"train[{objective.method}]",
               disable=jax.process_index() != 0, dynamic_ncols=True)
    with _StopOnSignal() as signals, jax.set_mesh(mesh):
        while step < t.steps:
            indices = sampler.indices(step)[rows]
            batch = host_batch_to_global(make_batch(splits["train"], indices,
                                                    config.data.pad_to_multiple), sharding)
            state, metrics = step_fn(state, batch, ref_params)
            pending.append(metrics)
            step += 1
            bar.update(1)
            last = step == t.steps
            if step % t.log_every == 0 or last:
                logged = {f"train/{k}": float(np.mean([m[k] for m in jax.device_get(pending)]))
                          for k in pending[0]}
                logged["train/loss"] = logged.pop("train/loss/total")
                pending = []
                if not np.isfinite(logged["train/loss"]):
                    raise FloatingPointError(f"non-finite training loss at step {step}")
                writer.write(step, logged)
                bar.set_postfix(loss=f"{logged['train/loss']:.4f}",
                                acc=f"{logged['train/' + objective.accuracy_metric]:.3f}")
            if step % t.eval_every == 0 or last:
                validation = evaluate(state.params, "validation")
                writer.write(step, {f"eval/{k}": v for k, v in validation.items()})
                if validation["accuracy"] > best_score:
                    best_score = validation["accuracy"]
                    checkpoints.save_best(step, state.params,
                                          {"step": step, "validation": validation})
            stopping = signals.received is not None or (
                stop_condition is not None and stop_condition(step))
            if step % t.checkpoint_every == 0 or last or stopping:
                checkpoints.save(step, state, {
                    "step": step, "data_position": sampler.position(step),
                    "best_validation_accuracy": best_score,
                })
            if stopping and not last:
                break
    bar.close()
    checkpoints.wait()

    result = RunResult(workdir, step, step == t.steps, checkpoints.best_step(), validation, None,
                       state)
    if not result.completed:
        log.info("stopped at step %d of %d; run again with --workdir=%s to resume", step,
                 t.steps, workdir)
        writer.close()
        checkpoints.close()
        return result

    # The test split is read once, by the params that validation chose.
    best_params, best_meta = checkpoints.restore_best(abstract_like(state.params))
    result.test = evaluate(best_params, "test")
    result.validation = best_meta["validation"]
    writer.write(step, {f"test/{k}": v for k, v in result.test.items()})
    writer.close()
    checkpoints.close()
    _write_json(os.path.join(workdir, "results.json"), {
        "method": objective.method, "steps": step, "best_step": result.best_step,
        "validation": result.validation, "test": result.test,
        "label_noise": config.data.label_noise, "flipped_train_pairs": int(len(data.flipped)),
    })
    return result
