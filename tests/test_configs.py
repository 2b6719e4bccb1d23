"""Every shipped recipe loads and passes validation, so a config cannot rot unnoticed."""

import importlib
import pathlib

import pytest

from hafrm_jax import configuration

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                 if p.stem != "__init__")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_validates(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    configuration.validate(config)
    configuration.loss_config(config)  # builds the typed model and objective configs


def test_validation_names_the_key():
    from configs.default import get_config

    cases = {
        ("train", "method", "ppo"): "train.method",
        ("train", "grad_accum_steps", 3): "grad_accum_steps",
        ("data", "max_prompt_length", 40): "max_prompt_length",
        ("optim", "schedule", "step"): "optim.schedule",
        ("data", "label_noise", 1.5): "data.label_noise",
        ("model", "num_kv_heads", 3): "model:",
    }
    for (section, key, value), expected in cases.items():
        config = get_config()
        config[section][key] = value
        with pytest.raises(configuration.ConfigError, match=expected):
            configuration.validate(config)
    config = get_config()
    config.train.method, config.train.alpha = "dpo", 0.0
    with pytest.raises(configuration.ConfigError, match="alpha=0"):
        configuration.validate(config)
    config = get_config()
    config.train.dpo_loss, config.train.label_smoothing = "ipo", 0.1
    with pytest.raises(configuration.ConfigError, match="sigmoid"):
        configuration.validate(config)
    config = get_config()  # a reader's options, checked before any file is read
    config.data.source, config.data.options.pair_selection = "hh_rlhf", "safer"
    with pytest.raises(configuration.ConfigError,
                       match=r"data.options: unknown option\(s\) \['pair_selection'\]"):
        configuration.validate(config)


def test_recipes_carry_the_paper_hyperparameters():
    for name in ("hh", "hh_helpful", "hh_harmless", "beaver", "alpaca_farm", "chatbot_arena",
                 "hh_mistral_lora", "smollm2_hh"):
        config = importlib.import_module(f"configs.{name}").get_config()
        assert (config.data.max_length, config.data.max_prompt_length) == (512, 128)
        assert (config.train.alpha, config.train.beta, config.train.batch_size) == (0.2, 0.1, 16)
        assert config.optim.learning_rate == (3e-5 if config.model.lora.rank else 1e-5)
        assert config.data.source != "synthetic"


def test_missing_local_model_is_a_clear_error(tmp_path):
    from configs.hh import get_config
    from hafrm_jax.train.loop import train_and_evaluate

    config = get_config()
    config.model.name_or_path = str(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        train_and_evaluate(config, str(tmp_path / "run"))


def test_kernel_tiles_are_config_keys_checked_by_name():
    """model.lm_head_blocks / model.mlp_blocks reach the model config; a tile Triton cannot take
    is refused before anything runs, naming the key."""
    from configs.default import get_config

    config = get_config()
    config.model.mlp_kernel, config.model.mlp_blocks = "pallas", (64, 128, 32, 4, 4)
    config.model.lm_head_blocks = [128, 256, 64]  # as a saved run's config.json holds it
    configuration.validate(config)
    model = configuration.model_config(config)
    assert model.mlp_kernel_blocks.tile == "64x128x32" and model.mlp_kernel_blocks.warps == 4
    assert model.lm_head_blocks == (128, 256, 64)
    for key, value, message in (("mlp_blocks", (48, 128, 64), "rows=48 must be a power of two"),
                                ("mlp_blocks", (64, 128), "rows, mlp, depth"),
                                ("lm_head_blocks", (128, 128, 64, 3), "warps=3")):
        config = get_config()
        config.model[key] = value
        with pytest.raises(configuration.ConfigError, match=f"model.{key}=.*{message}"):
            configuration.validate(config)


def test_a_kernel_the_pretrained_architecture_cannot_take_is_a_config_error(tmp_path):
    """The MLP kernel computes gated silu MLPs; a GELU checkpoint (Phi's shape) with
    mlp_kernel=pallas is refused as a ConfigError naming the checkpoint, not a bare ValueError
    from deep in the model config."""
    import dataclasses
    import json

    from configs.default import get_config
    from hafrm_jax.hf.config import hf_config_dict
    from hafrm_jax.model.config import PRESETS

    phi = dataclasses.replace(PRESETS["phi-2"], vocab_size=256, hidden_size=64,
                              intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=4)
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict(phi)))
    config = get_config()
    config.model.name_or_path, config.model.mlp_kernel = str(tmp_path), "pallas"
    with pytest.raises(configuration.ConfigError,
                       match=r"model \(from .*\): mlp_kernel='pallas'.*activation='gelu_tanh'"):
        configuration.model_config(config, str(tmp_path))
    config.model.mlp_kernel = "xla"
    assert configuration.model_config(config, str(tmp_path)).activation == "gelu_tanh"
