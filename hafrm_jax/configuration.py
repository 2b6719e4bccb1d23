"""From an ml_collections ConfigDict to the typed configs the library runs on, with checks.

Every check runs before anything is compiled and raises one `ConfigError` naming the key.
"""

from __future__ import annotations

import difflib
import functools

import ml_collections

from hafrm_jax.model.config import (ATTENTION_IMPLS, KERNEL_BLOCKS, LM_HEAD_KERNELS, MLP_KERNELS,
                                    REMAT_POLICIES, LoraConfig, ModelConfig, check_blocks, preset)
from hafrm_jax.objective import METHODS, LossConfig, ObjectiveConfig
from hafrm_jax.sharding import DEFAULT_RULES, MESH_AXES

SCHEDULES = ("cosine", "linear", "constant")


class ConfigError(ValueError):
    """A configuration that cannot run, with the key at fault in the message."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


ARCHITECTURE_KEYS = ("num_layers", "hidden_size", "intermediate_size", "num_heads",
                     "num_kv_heads")


def lora_config(config: ml_collections.ConfigDict) -> LoraConfig | None:
    lora = config.model.lora
    if lora.rank <= 0:
        return None
    return LoraConfig(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                      targets=LoraConfig.parse_targets(lora.targets))


def execution_options(config: ml_collections.ConfigDict) -> dict:
    """The ModelConfig fields that the run config sets whatever the architecture's source."""
    m = config.model
    return dict(dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat,
                scan_unroll=m.scan_unroll, attention_impl=m.attention_impl,
                logprob_chunk=m.logprob_chunk, lm_head_kernel=m.lm_head_kernel,
                lm_head_blocks=tuple(m.lm_head_blocks), mlp_kernel=m.mlp_kernel,
                mlp_blocks=tuple(m.mlp_blocks), lora=lora_config(config))


def model_config(config: ml_collections.ConfigDict, pretrained_dir: str | None = None) -> ModelConfig:
    """The architecture: a preset (with size overrides), or the pretrained checkpoint's."""
    m = config.model
    if pretrained_dir is not None:
        from hafrm_jax.hf.checkpoint import pretrained_model_config
        from hafrm_jax.hf.config import UnsupportedModelError

        overridden = [k for k in ARCHITECTURE_KEYS if m[k] is not None]
        if overridden:
            raise ConfigError(f"model.{overridden[0]} cannot change the architecture of the "
                              f"pretrained model.name_or_path={m.name_or_path!r}")
        try:
            return pretrained_model_config(pretrained_dir, **execution_options(config))
        except UnsupportedModelError:
            raise
        except ValueError as e:  # an execution option this architecture cannot take
            raise ConfigError(f"model (from {m.name_or_path!r}): {e}") from e
    return preset(m.preset, **{k: m[k] for k in ARCHITECTURE_KEYS}, **execution_options(config))


def objective_config(config: ml_collections.ConfigDict) -> ObjectiveConfig:
    t = config.train
    return ObjectiveConfig(
        method=t.method, alpha=t.alpha, beta=t.beta, dpo_loss=t.dpo_loss,
        label_smoothing=t.label_smoothing, reward_centering=t.reward_centering,
        reference=t.reference,
    )


def loss_config(config: ml_collections.ConfigDict,
                pretrained_dir: str | None = None) -> LossConfig:
    return LossConfig(model=model_config(config, pretrained_dir),
                      objective=objective_config(config))


MODEL_DTYPES = ("float32", "bfloat16", "float16")


def logical_rules(config: ml_collections.ConfigDict) -> tuple:
    return tuple(config.mesh.rules) if config.mesh.rules else DEFAULT_RULES


# Free-form groups: reader options (checked by the reader of data.source) and named datasets.
FREE_FORM = ("data.options", "eval.datasets")


def _schema_types(schema: ml_collections.ConfigDict, prefix: str = "") -> dict[str, type]:
    out = {}
    for key in schema.keys():
        name = f"{prefix}{key}"
        value = schema[key]
        if isinstance(value, ml_collections.ConfigDict):
            out[name] = ml_collections.ConfigDict
            if name not in FREE_FORM:
                out.update(_schema_types(value, f"{name}."))
        else:
            out[name] = schema.get_ref(key).get_type()
    return out


@functools.cache
def schema_types() -> dict[str, type]:
    """Every key a run config has ("train.steps"), with its type; groups map to ConfigDict."""
    from hafrm_jax.config_schema import default_config

    return _schema_types(default_config())


def free_form_group(name: str) -> str | None:
    """The free-form group that `name` lies in ("data.options.x" -> "data.options"), if any."""
    return next((group for group in FREE_FORM if name.startswith(group + ".")), None)


def is_known_key(name: str) -> bool:
    """Whether `name` ("train.steps") is a key of the schema or lies in a free-form group."""
    return name in schema_types() or free_form_group(name) is not None


def unknown_key_message(name: str) -> str:
    """The message for a key no run config has, with a hint: a key of the same last name in
    another group, else the closest spelling ('train.stpes' -> train.steps)."""
    expected = schema_types()
    leaf = name.rsplit(".", 1)[-1]
    close = ([k for k in expected if k.rsplit(".", 1)[-1] == leaf]
             or difflib.get_close_matches(name, expected, n=1, cutoff=0.8))
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown config key {name!r}{hint}"


def _check_schema(config: ml_collections.ConfigDict) -> None:
    """Unknown keys and values of the wrong type, each named."""
    expected = schema_types()
    seen = set()

    def walk(node, prefix):
        for key in node.keys():
            name = f"{prefix}{key}"
            value = node[key]
            if not is_known_key(name):
                raise ConfigError(unknown_key_message(name))
            if name not in expected:
                continue
            seen.add(name)
            want = expected[name]
            if want is ml_collections.ConfigDict:
                if not isinstance(value, ml_collections.ConfigDict):
                    raise ConfigError(f"config key {name!r} must be a group of keys, got "
                                      f"{value!r}")
                if name not in FREE_FORM:
                    walk(value, f"{name}.")
            elif value is not None and not isinstance(value, want) and not (
                    want is float and isinstance(value, int) and not isinstance(value, bool)) \
                    and not (want is tuple and isinstance(value, list)):
                raise ConfigError(f"config key {name!r} must be of type {want.__name__}, got "
                                  f"{type(value).__name__} {value!r}")

    walk(config, "")
    missing = sorted(k for k in expected if k not in seen)  # the schema stops at free-form groups
    if missing:
        raise ConfigError(f"config is missing key(s) {missing[:5]}: start recipes from "
                          "configs/default.py's get_config()")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ConfigError on unknown keys, wrong types and values that cannot work together."""
    _check_schema(config)
    t, d, o, m = config.train, config.data, config.optim, config.model
    _require(t.method in METHODS, f"train.method={t.method!r}: expected one of {METHODS}")
    _require(t.beta > 0, f"train.beta={t.beta}: must be positive")
    _require(t.alpha >= 0, f"train.alpha={t.alpha}: must be non-negative")
    _require(not (t.method in ("haf", "dpo") and t.alpha == 0),
             f"train.method={t.method!r} with train.alpha=0 trains no DPO term; "
             "use train.method=baseline for the plain reward model")
    _require(t.dpo_loss in ("sigmoid", "hinge", "ipo"),
             f"train.dpo_loss={t.dpo_loss!r}: expected sigmoid, hinge or ipo")
    _require(0 <= t.label_smoothing < 0.5,
             f"train.label_smoothing={t.label_smoothing}: must be in [0, 0.5)")
    _require(not (t.label_smoothing > 0 and t.method != "baseline" and t.dpo_loss != "sigmoid"),
             f"train.label_smoothing applies to the sigmoid DPO form only, not "
             f"train.dpo_loss={t.dpo_loss!r}")
    _require(t.reward_centering >= 0, "train.reward_centering must be non-negative")
    _require(t.reference in ("cached", "online"),
             f"train.reference={t.reference!r}: expected cached or online")
    _require(t.steps > 0, f"train.steps={t.steps}: must be positive")
    _require(t.batch_size > 0, f"train.batch_size={t.batch_size}: must be positive")
    _require(t.grad_accum_steps > 0 and t.batch_size % t.grad_accum_steps == 0,
             f"train.batch_size={t.batch_size} is not divisible by "
             f"train.grad_accum_steps={t.grad_accum_steps}")
    for key in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                "eval_batch_size", "max_consecutive_skips"):
        _require(t[key] > 0, f"train.{key}={t[key]}: must be positive")
    _require(0 <= d.label_noise <= 1, f"data.label_noise={d.label_noise}: must be in [0, 1]")
    _require(d.max_prompt_length < d.max_length,
             f"data.max_prompt_length={d.max_prompt_length} must be below "
             f"data.max_length={d.max_length}")
    _require(d.pad_to_multiple > 0, "data.pad_to_multiple must be positive")
    _require(d.bucket_batches >= 1, "data.bucket_batches must be at least 1")
    _require(d.on_error in ("raise", "skip"), f"data.on_error={d.on_error!r}: expected raise "
             "or skip")
    _require(d.chat_format in ("auto", "tokenizer", "hh"),
             f"data.chat_format={d.chat_format!r}: expected auto, tokenizer or hh")
    _require(0 < d.validation_fraction < 1, "data.validation_fraction must be in (0, 1)")
    _require(0 <= d.test_fraction < 1, "data.test_fraction must be in [0, 1)")
    from hafrm_jax.data.pipeline import SOURCES
    from hafrm_jax.data.readers import READERS, check_reader_options
    from hafrm_jax.data.sources import reader_options

    _require(d.source in SOURCES, f"data.source={d.source!r}: expected one of {SOURCES}")
    if d.source in READERS:  # records from files, the hub or TFDS: the reader's own options
        try:
            check_reader_options(d.source, reader_options(d))
        except ValueError as e:
            raise ConfigError(f"data.options: {e}") from None
    _require(o.schedule in SCHEDULES, f"optim.schedule={o.schedule!r}: expected one of {SCHEDULES}")
    _require(o.learning_rate > 0, "optim.learning_rate must be positive")
    _require(0 <= o.warmup_steps < t.steps,
             f"optim.warmup_steps={o.warmup_steps} must be below train.steps={t.steps}")
    _require(m.remat in REMAT_POLICIES,
             f"model.remat={m.remat!r}: expected one of {', '.join(REMAT_POLICIES)}")
    _require(m.scan_unroll >= 0,
             f"model.scan_unroll={m.scan_unroll} must be non-negative (0: every layer)")
    _require(m.attention_impl in ATTENTION_IMPLS,
             f"model.attention_impl={m.attention_impl!r}: expected one of "
             f"{', '.join(ATTENTION_IMPLS)}")
    _require(m.lm_head_kernel in LM_HEAD_KERNELS,
             f"model.lm_head_kernel={m.lm_head_kernel!r}: expected one of "
             f"{', '.join(LM_HEAD_KERNELS)}")
    _require(m.mlp_kernel in MLP_KERNELS,
             f"model.mlp_kernel={m.mlp_kernel!r}: expected one of {', '.join(MLP_KERNELS)}")
    for key in KERNEL_BLOCKS:
        try:
            check_blocks(key, tuple(m[key]))
        except ValueError as e:
            raise ConfigError(f"model.{e}") from None
    for key in ("dtype", "param_dtype"):
        _require(m[key] in MODEL_DTYPES,
                 f"model.{key}={m[key]!r}: expected one of {', '.join(MODEL_DTYPES)}")
    _require(m.num_layers is None or m.num_layers >= 1,
             f"model.num_layers={m.num_layers}: must be at least 1")
    if d.source == "synthetic":
        _require(d.num_train >= t.batch_size, f"data.num_train={d.num_train} is below "
                 f"train.batch_size={t.batch_size}: not one batch")
        for key in ("num_validation", "num_test"):
            _require(d[key] >= 1, f"data.{key}={d[key]}: must be at least 1")
    else:
        _require(bool(m.name_or_path), f"data.source={d.source!r} is text for a pretrained "
                 "model: set model.name_or_path (a Hugging Face checkpoint directory, hub id or "
                 "GGUF)")
    sizes = [config.mesh.data, config.mesh.fsdp, config.mesh.tensor]
    _require(all(size == -1 or size >= 1 for size in sizes) and sizes.count(-1) <= 1,
             f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]}: each must be a positive "
             "size or -1 (the rest of the devices), at most one -1")
    if config.mesh.rules is not None:
        for rule in config.mesh.rules:
            axes = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
            _require(all(a is None or a in MESH_AXES for a in axes),
                     f"mesh.rules: {tuple(rule)} maps to an axis not in the mesh "
                     f"({', '.join(MESH_AXES)})")
    _require(m.lora.rank >= 0, "model.lora.rank must be non-negative")
    _require(0 <= m.lora.dropout < 1, "model.lora.dropout must be in [0, 1)")
    _require(m.lora.alpha > 0, "model.lora.alpha must be positive")
    _require(m.lora.base_dtype in ("", "float32", "bfloat16"),
             f"model.lora.base_dtype={m.lora.base_dtype!r}: expected '', float32 or bfloat16")
    if m.lora.rank:
        try:
            LoraConfig.parse_targets(m.lora.targets)
        except ValueError as e:
            raise ConfigError(f"model.lora.targets: {e}") from e
    if not m.name_or_path:  # a pretrained architecture is checked when it is read
        try:
            model_config(config)
        except ValueError as e:
            raise ConfigError(f"model: {e}") from e
