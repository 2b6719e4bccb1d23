"""The training entry point end to end, on a shrunk default config."""

import json
import logging
import os

import jax
import numpy as np
import pytest

from configs.default import get_config
from hafrm_jax.configuration import ConfigError
from hafrm_jax.train.loop import train_and_evaluate


def small_config(**train):
    config = get_config()
    config.model.num_layers = 1
    config.model.hidden_size = 32
    config.model.intermediate_size = 64
    config.data.num_train, config.data.num_validation, config.data.num_test = 256, 64, 64
    config.train.steps = 12
    config.train.batch_size = 8
    config.train.log_every = 2
    config.train.eval_every = 4
    config.train.eval_batch_size = 32
    config.train.checkpoint_every = 100
    config.optim.warmup_steps = 2
    for key, value in train.items():
        config.train[key] = value
    return config


def read_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_workdir_contents(tmp_path):
    result = train_and_evaluate(small_config(), str(tmp_path))
    assert result.completed and result.step == 12
    rows = read_rows(tmp_path)
    train_rows = [r for r in rows if "train/loss" in r]
    eval_rows = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in eval_rows] == [4, 8, 12]
    assert all(np.isfinite(r["train/loss"]) for r in train_rows)
    # the params' norm is logged at each log step (outside the step); training moves it
    norms = [r["train/optim/param_norm"] for r in train_rows]
    assert all(n > 0 for n in norms) and len(set(norms)) == len(norms)
    assert all(r["train/optim/grad_norm"] > 0 for r in train_rows)
    assert any("test/accuracy" in r for r in rows)
    assert os.listdir(tmp_path / "tensorboard")
    assert (tmp_path / "tokenizer" / "tokenizer.json").exists()
    assert (tmp_path / "reference_logps.safetensors").exists()
    assert sorted(f.split("-")[0] for f in os.listdir(tmp_path / "tokenized")) == [
        "test", "train", "validation"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["test"]["num_pairs"] == 64 and saved["best_step"] in (4, 8, 12)
    assert saved["validation"]["accuracy"] == max(r["eval/accuracy"] for r in eval_rows)


@pytest.mark.parametrize("method", ["baseline", "dpo"])
def test_other_methods_run(tmp_path, method):
    result = train_and_evaluate(small_config(method=method, steps=4, eval_every=4), str(tmp_path))
    assert result.completed
    if method == "baseline":  # no reference pass at all
        assert not (tmp_path / "reference_logps.safetensors").exists()
        assert "implicit_accuracy" not in result.test
    else:  # scored by DPO's implicit reward
        assert result.test["accuracy"] == result.test["implicit_accuracy"]
        assert "reward_accuracy" not in result.test


def _params(result):
    return jax.tree_util.tree_leaves(jax.device_get(result.state.params))


def test_stop_and_resume_equals_uninterrupted(tmp_path, caplog):
    config = small_config(grad_accum_steps=2)
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    stopped = train_and_evaluate(config, str(tmp_path / "resumed"), stop_condition=lambda s: s == 5)
    assert not stopped.completed and stopped.step == 5
    with caplog.at_level(logging.INFO, logger="hafrm_jax.data.token_cache"):
        resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
    assert caplog.text.count("tokenised pairs read from") == 3  # the splits were not tokenised
    assert resumed.completed and resumed.step == 12
    for a, b in zip(_params(straight), _params(resumed)):
        np.testing.assert_array_equal(a, b)
    assert resumed.test == straight.test
    # the resumed run's metrics file has each step once, and the same means: the window the
    # stop cut (step 5 of the log at 6) came back with the checkpoint
    logged = {r["step"]: r for r in read_rows(tmp_path / "resumed") if "train/loss" in r}
    assert list(logged) == [2, 4, 6, 8, 10, 12]
    for row in read_rows(tmp_path / "straight"):
        if "train/loss" in row:
            for key in ("train/loss", "train/reward/accuracy", "train/optim/grad_norm"):
                assert logged[row["step"]][key] == row[key], (row["step"], key)


def test_online_reference_equals_cached(tmp_path):
    cached = train_and_evaluate(small_config(steps=4), str(tmp_path / "cached"))
    online = train_and_evaluate(small_config(steps=4, reference="online"), str(tmp_path / "online"))
    for a, b in zip(_params(cached), _params(online)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_lm_head_kernels_train_the_run_xla_trains(tmp_path):
    """model.lm_head_kernel=pallas (its kernels run by Pallas' interpreter on the CPU) trains the
    same run as XLA's head: reference pass, training steps, evaluation."""
    runs = {}
    for kernel in ("xla", "pallas"):
        config = small_config(steps=4, eval_every=4)
        config.model.lm_head_kernel = kernel
        runs[kernel] = train_and_evaluate(config, str(tmp_path / kernel))
    losses = {k: [r["train/loss"] for r in read_rows(tmp_path / k) if "train/loss" in r]
              for k in runs}
    np.testing.assert_allclose(losses["pallas"], losses["xla"], rtol=1e-5)
    assert runs["pallas"].test["accuracy"] == runs["xla"].test["accuracy"]
    # sums in another order: float32 rounding, which Adam's normalised updates carry to ~1e-6
    for a, b in zip(_params(runs["pallas"]), _params(runs["xla"])):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5)


@pytest.mark.slow
def test_default_task_is_learned(tmp_path):
    """A few hundred steps of the default config get well past chance (0.5)."""
    config = get_config()
    config.train.steps = 300
    config.train.eval_every = 100
    result = train_and_evaluate(config, str(tmp_path))
    assert result.test["accuracy"] >= 0.7, result.test


def test_lora_run_resumes_exactly_and_loads_merged(tmp_path):
    """With the frozen base stored in bf16, as the paper's Mistral recipe does."""
    config = small_config(grad_accum_steps=2)
    lora = config.model.lora
    lora.rank, lora.targets, lora.dropout, lora.train_lm_head = 4, "all", 0.1, True
    lora.base_dtype = "bfloat16"
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    assert set(straight.state.params) == {"lora", "reward_head", "lm_head"}  # no base state
    train_and_evaluate(config, str(tmp_path / "resumed"), stop_condition=lambda s: s == 5)
    resumed = train_and_evaluate(config, str(tmp_path / "resumed"))
    for a, b in zip(_params(straight), _params(resumed)):
        np.testing.assert_array_equal(a, b)
    from hafrm_jax.workdir import load_run

    run = load_run(str(tmp_path / "straight"))
    assert run.model_config.lora is None and run.lora.rank == 4
    assert "lora" not in run.params and "lm_head" in run.params
    # eval.py rebuilds the merged model and the DPO reference from the base rounded to bf16,
    # as the run computed with it, so it gives the run's own test numbers
    from hafrm_jax.evaluation_cli import evaluate_pair_sets, pair_sets_from_config
    from hafrm_jax.scorer import load_scorer

    scorer = load_scorer(str(tmp_path / "straight"))
    test = evaluate_pair_sets(scorer, pair_sets_from_config(scorer), bootstrap=0)["test"]
    assert test["reward_margin"] == pytest.approx(straight.test["reward_margin"], rel=1e-5)
    # a difference of log-prob sums: float32 rounding of the sums (~1e-5) is its noise
    assert test["implicit_margin"] == pytest.approx(straight.test["implicit_margin"], abs=1e-7)
    # PEFT adapters of a random base have nothing to load onto; --peft is the reward model's
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for flags, refusal in ((["--peft"], "trained its adapters on a random initialisation"),
                           (["--peft", "--head=policy"], "--head=policy without --peft")):
        out = subprocess.run([sys.executable, "export.py", f"--workdir={tmp_path / 'straight'}",
                              f"--out={tmp_path / 'peft'}", *flags], cwd=root,
                             capture_output=True, text=True)
        assert out.returncode != 0 and refusal in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "peft").exists()


def test_train_lm_head_on_a_tied_model_is_warned_not_ignored_silently(caplog):
    """A tied model has no LM head of its own to train in full (it is the input embedding,
    frozen with the base): the run says so."""
    import dataclasses
    import logging

    from hafrm_jax import configuration
    from hafrm_jax.sharding import make_mesh
    from hafrm_jax.train.loop import _split_for_lora
    from hafrm_jax.train.state import init_params

    config = small_config()
    config.model.lora.rank, config.model.lora.train_lm_head = 2, True
    loss_config = configuration.loss_config(config)
    loss_config = dataclasses.replace(
        loss_config, model=dataclasses.replace(loss_config.model, tie_embeddings=True))
    mesh, rules = make_mesh(), configuration.logical_rules(config)
    params, shardings = init_params(loss_config.model, 0, mesh, rules)
    with caplog.at_level(logging.WARNING):
        trainable = _split_for_lora(config, loss_config, params, shardings, mesh, rules)[0]
    assert set(trainable) == {"lora", "reward_head"}
    assert "model.lora.train_lm_head has no effect" in caplog.text


def test_a_url_workdir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="'gs://bucket/run' is a URL.*gcsfuse"):
        train_and_evaluate(small_config(), "gs://bucket/run")
    assert not os.listdir(tmp_path)


def test_fewer_training_pairs_than_a_batch_is_a_config_error(tmp_path):
    """Read from files, the training split's size is known only once read and tokenised."""
    from tests.helpers import bpe_tokenizer, tiny_checkpoint, write_jsonl

    records = [{"prompt": f"question {i}", "chosen": "a kind answer", "rejected": "a rude one"}
               for i in range(5)]
    config = get_config()
    config.train.batch_size = 4
    config.model.name_or_path = tiny_checkpoint(
        str(tmp_path / "model"), bpe_tokenizer([r["prompt"] + r["chosen"] for r in records]))
    config.data.source = "generic"
    for split, part in (("train", records[:3]), ("validation", records[3:]),
                        ("test", records[3:])):
        config.data.files[split] = write_jsonl(tmp_path / f"{split}.jsonl", part)
    with pytest.raises(ConfigError, match="train.batch_size=4 is more than the 3 training pairs"):
        train_and_evaluate(config, str(tmp_path / "run"))
