"""The training entry point: `train_and_evaluate(config, workdir)`.

Reads top to bottom: config -> model and tokenizer -> mesh -> data -> state -> reference
log-probs -> resume -> loop (log, validate, checkpoint) -> test the best-by-validation params.
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
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from hafrm_jax import configuration, reference
from hafrm_jax.checkpoint import RunCheckpoints, abstract_like
from hafrm_jax.data.batching import EpochSampler, make_batch, padding_fraction
from hafrm_jax.data.pipeline import host_share, load_tokenizer, prepare_data
from hafrm_jax.evaluation import eval_batch_size, local_rows, make_score_fn, score_pairs
from hafrm_jax.hf.checkpoint import original_hf_config, resolve_checkpoint
from hafrm_jax.metrics import pair_metrics
from hafrm_jax.objective import LossConfig
from hafrm_jax.sharding import (batch_sharding, data_parallel_size, device_description,
                                host_batch_to_global, make_mesh, replicated,
                                traced_under_rules)
from hafrm_jax.train import compilation_cache
from hafrm_jax.train.memory import check_step_fits, device_memory_limit
from hafrm_jax.train.metrics_writer import MetricsWriter
from hafrm_jax.train.optimizer import make_optimizer
from hafrm_jax.train.plots import plot_training_curves
from hafrm_jax.train.run_files import (cache_directory, check_resume, save_data_summary,
                                        save_run_files, write_json)
from hafrm_jax.model.lora import split_trainable
from hafrm_jax.train.state import (TrainState, count_params, create_train_state, init_adapters,
                                   init_params)
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


class NonFiniteError(FloatingPointError):
    """Too many updates in a row had a non-finite loss or gradient."""


@dataclasses.dataclass
class RunResult:
    workdir: str
    step: int
    completed: bool  # False when stopped early (signal or stop condition)
    best_step: int | None
    validation: dict[str, float] | None
    test: dict[str, float] | None
    state: TrainState | None = None  # the final train state (params, optimizer state, ...)
    last_train_metrics: dict[str, float] | None = None  # the last logged train/... means
    compiling: compilation_cache.CompileReport | None = None  # this invocation's compiles


def _check_batch_fits(config, mesh, rules) -> None:
    t = config.train
    dp = data_parallel_size(mesh, rules)
    micro = t.batch_size // t.grad_accum_steps
    if micro % dp or t.batch_size % jax.process_count():
        raise configuration.ConfigError(
            f"train.batch_size / train.grad_accum_steps = {micro} pairs must be divisible by the "
            f"data-parallel size {dp} (mesh {dict(mesh.shape)}), and train.batch_size by the "
            f"{jax.process_count()} processes")


def _attach_reference_logps(config, workdir: str, loss_config: LossConfig, splits: dict,
                            params: Any, score: Callable, mesh, rules) -> None:
    """Set `ref_logps` of the splits from the starting params: from the workdir's cache, or
    computed once (one forward pass over the data) and cached. With reference="online" the
    training split's come from a frozen copy at every step instead."""
    objective = loss_config.objective
    names = [n for n in splits if not (n == "train" and objective.reference == "online")]
    key = reference.fingerprint({n: splits[n] for n in names}, {
        "model": repr(loss_config.model), "seed": config.train.seed,
        "pretrained": config.model.name_or_path})
    refs = reference.load_cache(workdir, key)
    if refs is None:
        logp_fn = make_score_fn(loss_config.model, mesh, rules, with_rewards=False,
                                with_logprobs=True)
        started, refs = time.time(), {}
        for name in names:
            data = splits[name]
            if name == "train":  # held whole on every host: each scores its share
                data = data.take(host_share(len(data), jax.process_index(),
                                            jax.process_count()))
            scores = score(logp_fn, params, data, name)
            refs[f"{name}.index"], refs[f"{name}.logps"] = scores["index"], scores["logps"]
        log.info("reference log-probs: %d pairs in %.1fs",
                 sum(len(v) for k, v in refs.items() if k.endswith(".index")),
                 time.time() - started)
        reference.save_cache(workdir, refs, key)
    for name in names:
        rows = local_rows({"index": refs[f"{name}.index"]}, splits[name])
        splits[name].ref_logps = refs[f"{name}.logps"][rows]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_condition: StopCondition | None = None) -> RunResult:
    """Train with `config` in `workdir`, resuming from its latest checkpoint if there is one.

    `stop_condition(step)` lets a caller end the run early after a step (it is checkpointed
    first), as a preemption signal does. Compiled programs are kept in
    `train.compilation_cache_dir` (inside the workdir by default), so running again there
    reads them instead of compiling.
    """
    configuration.validate(config)
    if "://" in workdir:  # os and open() would write a local folder named after the URL
        raise configuration.ConfigError(
            f"workdir {workdir!r} is a URL; it must be a filesystem path (every host's, on a "
            "multi-host job): mount a Cloud Storage bucket with gcsfuse (e.g. "
            "/gcs/my-bucket/runs/hh) or use a shared disk")
    cache = cache_directory(config.train.compilation_cache_dir, workdir)
    with compilation_cache.persistent_compilation_cache(cache) as compiling:
        result = _train_and_evaluate(config, workdir, stop_condition, compiling)
    log.info("%s", compiling.summary())
    return result


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        stop_condition: StopCondition | None,
                        compiling: compilation_cache.CompileReport) -> RunResult:
    started = time.perf_counter()
    t = config.train

    # Model, tokenizer, mesh: every check that needs no data, before any data is read.
    pretrained = resolve_checkpoint(config.model.name_or_path) if config.model.name_or_path \
        else None
    loss_config = configuration.loss_config(config, pretrained)
    objective = loss_config.objective
    tokenizer = load_tokenizer(config, pretrained)
    if len(tokenizer) > loss_config.model.vocab_size:
        raise configuration.ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is "
            f"{loss_config.model.vocab_size}")
    try:
        mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    except ValueError as e:  # sizes that do not multiply to this job's devices
        raise configuration.ConfigError(f"mesh: {e}") from e
    rules = configuration.logical_rules(config)
    _check_batch_fits(config, mesh, rules)
    os.makedirs(workdir, exist_ok=True)
    checkpoints = RunCheckpoints(workdir, t.keep_checkpoints)
    start = checkpoints.latest_step() or 0
    if start:
        check_resume(config, workdir, loss_config.model)
    else:  # a resumed run writes them once its checkpoint has restored
        _save_run_files(config, workdir, tokenizer, loss_config, pretrained)

    # Data: the training split, and this host's share of validation and test.
    data = prepare_data(config, tokenizer, jax.process_index(), jax.process_count(),
                        cache_dir=cache_directory(config.data.cache_dir, workdir))
    save_data_summary(workdir, data.prompt_format, data.sizes, data.read_counts)
    splits = data.splits
    for name, split in splits.items():
        log.info("%s: %d pairs (%d on this host), %d tokens", name, data.sizes[name], len(split),
                 split.num_tokens())
    if len(splits["train"]) < t.batch_size:
        raise configuration.ConfigError(f"train.batch_size={t.batch_size} is more than the "
                                        f"{len(splits['train'])} training pairs")

    # State (with LoRA: trainable adapters and heads, the base frozen), reference log-probs,
    # resume.
    optimizer, schedule = make_optimizer(config.optim, t.steps)
    params, params_sh = init_params(loss_config.model, t.seed, mesh, rules, pretrained)
    frozen = frozen_sh = None
    if loss_config.model.lora is not None:
        params, params_sh, frozen, frozen_sh = _split_for_lora(config, loss_config, params,
                                                               params_sh, mesh, rules)
    state, state_sh = create_train_state(params, params_sh, optimizer, t.seed, mesh)
    eval_bs = eval_batch_size(t.eval_batch_size, mesh, rules)
    score = functools.partial(_score_split, sizes=data.sizes, batch_size=eval_bs,
                              pad_to_multiple=config.data.pad_to_multiple, mesh=mesh,
                              rules=rules, frozen=frozen)
    ref_params = ref_sh = None
    if objective.reference == "online" and objective.uses_policy:
        # With LoRA: the base, plus a trained LM head's start.
        ref_params = state.params if frozen is None else (
            {"lm_head": state.params["lm_head"]} if "lm_head" in state.params else None)
        if ref_params is not None:
            ref_sh = params_sh if frozen is None else {"lm_head": params_sh["lm_head"]}
            ref_params = jax.tree_util.tree_map(lambda x: x.copy(), ref_params)

    # The step, jitted once with its shardings; the state's buffers are donated. Before the
    # reference pass and the first step: will it fit in device memory?
    batch_sh = batch_sharding(mesh, rules)
    step = functools.partial(train_step, loss_config=loss_config, optimizer=optimizer,
                             schedule=schedule, grad_accum_steps=t.grad_accum_steps)
    jitted = jax.jit(traced_under_rules(step, rules),
                     in_shardings=(state_sh, batch_sh, ref_sh, frozen_sh),
                     out_shardings=(state_sh, replicated(mesh)), donate_argnums=0)
    train = splits["train"]
    # The global batch of a step is drawn over the whole split; this host makes its rows.
    local_batch = t.batch_size // jax.process_count()
    own_rows = slice(jax.process_index() * local_batch, (jax.process_index() + 1) * local_batch)
    sampler = EpochSampler(len(train), t.batch_size, t.seed, lengths=train.lengths.max(axis=1),
                           bucket_batches=config.data.bucket_batches)
    log.info("training batches: %.1f%% padding", 100 * padding_fraction(
        train, sampler, config.data.pad_to_multiple))
    precompiled = {}  # batch shape -> the executable the memory check compiled for it
    limit = device_memory_limit(mesh) if t.check_memory else None  # None on the CPU
    if limit is not None:
        longest = host_batch_to_global(_longest_batch(
            train, local_batch, config.data.pad_to_multiple,
            with_ref_logps=objective.uses_policy and objective.reference == "cached"), batch_sh)
        shape = longest["input_ids"].shape
        with jax.set_mesh(mesh):  # as the loop calls it
            lowered = jitted.lower(state, longest, ref_params, frozen)
        precompiled[shape] = check_step_fits(lowered, limit, config, mesh.size, shape)

    def step_fn(state, batch):
        run = precompiled.get(batch["input_ids"].shape, jitted)
        return run(state, batch, ref_params, frozen)

    if objective.uses_policy:
        _attach_reference_logps(config, workdir, loss_config, splits, state.params, score, mesh,
                                rules)
    checkpoints.discard_best_after(start)  # written after the state we resume: stale
    best_score, best_step, pending = -np.inf, None, []
    if start:
        state, best_score, best_step, pending = _resume(checkpoints, start, state, workdir,
                                                        data.sizes["train"], config)
        _save_run_files(config, workdir, tokenizer, loss_config, pretrained)
    writer = MetricsWriter(workdir, resume_step=start,
                           wandb_project=t.wandb_project if t.wandb else None,
                           run_config=json.loads(config.to_json()))
    param_norm = jax.jit(optax.global_norm)  # of the trained params, at log steps only
    score_fn = make_score_fn(loss_config.model, mesh, rules, with_rewards=objective.uses_rewards,
                             with_logprobs=objective.uses_policy)
    primary = "implicit" if objective.method == "dpo" else "reward"

    def evaluate(params, split_name):
        scores = score(score_fn, params, splits[split_name], split_name)
        return pair_metrics(scores.get("rewards"), scores.get("logps"), scores.get("ref_logps"),
                            objective.beta, primary)


    last_logged: dict[str, float] = {}
    validation = None
    step = start
    tokens, clock = 0, time.time()  # for tokens/s in the progress bar (this host's share)
    bar = tqdm(total=t.steps, initial=start, desc=f"train[{objective.method}]",
               disable=jax.process_index() != 0, dynamic_ncols=True)
    with _StopOnSignal() as signals, jax.set_mesh(mesh):
        while step < t.steps:
            local = make_batch(train, sampler.indices(step)[own_rows],
                               config.data.pad_to_multiple)
            tokens += int(local["attention_mask"].sum())
            state, metrics = step_fn(state, host_batch_to_global(local, batch_sh))
            pending.append(metrics)
            step += 1
            bar.update(1)
            last = step == t.steps
            if step % t.log_every == 0 or last:
                logged = last_logged = _mean_metrics(pending)
                pending = []
                now = time.time()
                logged["perf/tokens_per_s"] = tokens * jax.process_count() / (now - clock)
                logged["train/optim/param_norm"] = float(param_norm(state.params))
                tokens, clock = 0, now
                writer.write(step, logged)
                bar.set_postfix(loss=f"{logged['train/loss']:.4f}",
                                acc=f"{logged['train/' + objective.accuracy_metric]:.3f}",
                                tok_s=f"{logged['perf/tokens_per_s']:.0f}")
                streak = int(jax.device_get(state.skip_streak))
                if streak >= t.max_consecutive_skips:
                    checkpoints.close()
                    raise NonFiniteError(
                        f"step {step}: the last {streak} updates had a non-finite loss or "
                        f"gradient and were skipped ({int(state.skipped)} in all). Lower "
                        "optim.learning_rate, check the data, or resume from the checkpoint "
                        f"in {workdir}/checkpoints")
            if step % t.eval_every == 0 or last:
                validation = evaluate(state.params, "validation")
                writer.write(step, {f"eval/{k}": v for k, v in validation.items()})
                if validation["accuracy"] > best_score:
                    best_score, best_step = validation["accuracy"], step
                    checkpoints.save_best(step, state.params,
                                          {"step": step, "validation": validation})
            stopping = signals.received is not None or (
                stop_condition is not None and stop_condition(step))
            if step % t.checkpoint_every == 0 or last or stopping:
                checkpoints.save(step, state, {
                    "step": step, "data_position": sampler.position(step),
                    "train_pairs": data.sizes["train"], "process_count": jax.process_count(),
                    "data_order": DATA_ORDER,
                    "best_validation_accuracy": best_score, "best_step": best_step,
                    # the steps since the last log, so a resumed run logs the same means
                    "pending_metrics": [{k: float(v) for k, v in m.items()}
                                        for m in jax.device_get(pending)],
                })
            if stopping and not last:
                break
    bar.close()
    checkpoints.wait()

    result = RunResult(workdir, step, step == t.steps, checkpoints.best_step(), validation, None,
                       state, last_logged, compiling)
    if not result.completed:
        log.info("stopped at step %d of %d; run again with --workdir=%s to resume", step,
                 t.steps, workdir)
        writer.close()
        checkpoints.close()
        if jax.process_index() == 0:
            plot_training_curves(workdir)
        return result

    # The test split is read once, by the params that validation chose.
    best_params, best_meta = checkpoints.restore_best(abstract_like(state.params))
    result.test = evaluate(best_params, "test")
    result.validation = best_meta["validation"]
    writer.write(step, {f"test/{k}": v for k, v in result.test.items()})
    writer.close()
    checkpoints.close()
    if jax.process_index() == 0:
        plot_training_curves(workdir)
    write_json(os.path.join(workdir, "results.json"), {
        "method": objective.method, "steps": step, "best_step": result.best_step,
        "validation": result.validation, "test": result.test,
        "skipped_updates": int(jax.device_get(state.skipped)),
        "label_noise": config.data.label_noise,
        "flipped_train_pairs": len(data.flipped),
        # This invocation's wall time (a resumed run counts only its last part).
        "wall_seconds": round(time.perf_counter() - started, 1),
        "compiling": compiling.as_dict(),  # this invocation's too
        "device": device_description(),
    })
    return result


def _score_split(score_fn, params, split, split_name: str, *, sizes: dict, **kwargs):
    return score_pairs(score_fn, params, split, sizes[split_name], **kwargs)


def _longest_batch(train, local_batch: int, pad_to_multiple: int,
                   with_ref_logps: bool) -> dict[str, np.ndarray]:
    """A host's rows of a batch of the longest training pairs (the largest shape a step can
    get), as the loop will make it once the reference log-probs are attached (zeros stand in)."""
    longest = np.argsort(train.lengths.max(axis=1), kind="stable")[-local_batch:]
    batch = make_batch(train, longest, pad_to_multiple)
    if with_ref_logps:
        batch["ref_logps"] = np.zeros((local_batch, 2), np.float32)
    return batch


def _save_run_files(config, workdir: str, tokenizer, loss_config: LossConfig,
                    pretrained: str | None) -> None:
    save_run_files(config, workdir, tokenizer, loss_config.model,
                   original_hf_config(pretrained) if pretrained else None)


# How a step's batch is drawn, as checkpoints record it. "global": over the whole training
# split, the same on any number of hosts. Checkpoints without the field come from versions in
# which each host shuffled its own share: the same order as "global" on one host only.
DATA_ORDER = "global"


def check_same_data_order(meta: dict, train_pairs: int, workdir: str) -> None:
    """Refuse to resume where the batch of a step would not be the one the run saw: the data
    has another number of pairs, or the run was trained on several hosts by a version that
    shuffled each host's share. Another number of hosts is fine: the order is global.
    Checkpoints of older versions lack the fields: what they lack is not checked."""
    saved = meta.get("train_pairs")
    if saved is not None and saved != train_pairs:
        raise configuration.ConfigError(
            f"{workdir} was trained with {saved} training pairs; this job has {train_pairs}: the "
            "batches of the coming steps would not continue its data order, so it cannot resume "
            "as the same run. Use another --workdir, or --config.train.allow_config_change=true.")
    hosts = meta.get("process_count")
    if meta.get("data_order") is None and hosts is not None and hosts > 1:
        raise configuration.ConfigError(
            f"{workdir} was trained on {hosts} hosts by an older version of hafrm-jax, whose "
            "hosts each shuffled their own share of the data: this version draws every batch "
            "over the whole split, so the coming steps would not continue that run's data "
            "order. Use another --workdir, or --config.train.allow_config_change=true.")


def _resume(checkpoints: RunCheckpoints, start: int, state: TrainState, workdir: str,
            train_pairs: int, config) -> tuple[TrainState, float, int | None, list[dict]]:
    """(state, best validation accuracy so far, its step, the metrics of the steps since the
    last log) from the checkpoint at `start`."""
    try:
        state, meta = checkpoints.restore(start, abstract_like(state))
    except ValueError as e:  # orbax: the saved tree is not the one this config builds
        raise configuration.ConfigError(
            f"{workdir}: the checkpoint of step {start} does not match the training state this "
            "config builds (a changed optimizer setting, e.g. optim.max_grad_norm turned on or "
            f"off, or LoRA targets); use another --workdir. Orbax: {e}") from e
    if not config.train.allow_config_change:
        check_same_data_order(meta, train_pairs, workdir)
    best_score, best_step = meta["best_validation_accuracy"], meta.get("best_step")
    if best_step is not None and not checkpoints.has_best(best_step):
        log.warning("the best params of step %d are missing from %s/best: model selection "
                    "starts again from this step", best_step, workdir)
        best_score, best_step = -np.inf, None
    pending = [{k: np.float32(v) for k, v in m.items()} for m in meta.get("pending_metrics", [])]
    log.info("resumed from step %d of %s", start, workdir)
    return state, best_score, best_step, pending


def _split_for_lora(config, loss_config: LossConfig, params, params_sh, mesh, rules):
    """(trainable, its shardings, frozen base, its shardings) for LoRA training; the base is
    cast to model.lora.base_dtype if set (bf16 halves its memory)."""
    lora = config.model.lora
    if lora.train_lm_head and loss_config.model.tie_embeddings:
        log.warning("model.lora.train_lm_head has no effect on %s: its LM head is the tied "
                    "input embedding, which stays frozen with the base (the LoRA adapters "
                    "and the reward head train)", config.model.name_or_path or "this model")
    adapters, adapters_sh = init_adapters(loss_config.model, config.train.seed, mesh, rules)
    trainable, frozen = split_trainable(params, adapters, lora.train_lm_head)
    trainable_sh, frozen_sh = split_trainable(params_sh, adapters_sh, lora.train_lm_head)
    if lora.base_dtype:
        dtype = jax.numpy.dtype(lora.base_dtype)
        frozen = jax.jit(lambda tree: jax.tree_util.tree_map(lambda x: x.astype(dtype), tree),
                         out_shardings=frozen_sh)(frozen)
    log.info("LoRA rank %d on %s: %.2fM trainable params, %.1fM frozen", lora.rank,
             ",".join(loss_config.model.lora.targets), count_params(trainable) / 1e6,
             count_params(frozen) / 1e6)
    return trainable, trainable_sh, frozen, frozen_sh


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
    """The mean of each metric over the steps since the last log, as train/... floats."""
    fetched = jax.device_get(pending)
    logged = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    logged["train/loss"] = logged.pop("train/loss/total")
    logged["train/optim/skipped"] = float(np.sum([m["optim/skipped"] for m in fetched]))
    return logged
