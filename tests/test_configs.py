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
