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


def test_hh_recipe_says_what_is_missing(tmp_path):
    from configs.hh import get_config
    from hafrm_jax.train.loop import train_and_evaluate

    with pytest.raises(ValueError, match="model.name_or_path"):
        train_and_evaluate(get_config(), str(tmp_path))
