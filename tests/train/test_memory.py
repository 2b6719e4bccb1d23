"""The memory check before training: a step that cannot fit stops the run before the reference
pass, naming settings that would fit; one that fits trains as without the check, on the
executable the check compiled. The CPU reports no memory limit, so these tests set one."""

import jax
import numpy as np
import pytest

from tests.train.test_loop import small_config

from hafrm_jax.train import loop, memory
from hafrm_jax.train.loop import train_and_evaluate
from hafrm_jax.train.memory import StepDoesNotFitError, check_step_fits, fit_advice


def _params(result):
    return jax.tree_util.tree_leaves(jax.device_get(result.state.params))


def test_a_step_over_the_limit_stops_before_the_reference_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "device_memory_limit", lambda mesh: 2**20)  # 1 MiB
    config = small_config(grad_accum_steps=2)
    with pytest.raises(StepDoesNotFitError) as raised:
        train_and_evaluate(config, str(tmp_path))
    message = str(raised.value)
    assert "GiB per device" in message and "1 MiB" not in message
    assert "batches of 8 pairs x 2 x" in message
    for lever in ("model.lora.rank=16", "model.remat=dots", "train.grad_accum_steps=4",
                  "model.dtype=bfloat16", "train.check_memory=False"):
        assert lever in message
    assert not (tmp_path / "reference_logps.safetensors").exists()  # stopped before it
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_step_that_fits_trains_as_without_the_check_and_resumes(tmp_path, monkeypatch):
    # check_memory=False: no check, even where the limit is far too small
    monkeypatch.setattr(loop, "device_memory_limit", lambda mesh: 2**20)
    unchecked = train_and_evaluate(small_config(check_memory=False), str(tmp_path / "plain"))
    assert unchecked.completed

    calls = []

    def counting_check(*args, **kwargs):
        compiled = check_step_fits(*args, **kwargs)

        def run(*step_args):
            calls.append(step_args[1]["input_ids"].shape)
            return compiled(*step_args)
        return run

    monkeypatch.setattr(loop, "device_memory_limit", lambda mesh: 2**40)
    monkeypatch.setattr(loop, "check_step_fits", counting_check)
    checked = train_and_evaluate(small_config(), str(tmp_path / "checked"),
                                 stop_condition=lambda step: step == 5)
    assert checked.step == 5
    checked = train_and_evaluate(small_config(), str(tmp_path / "checked"))  # resumed
    assert checked.completed and checked.step == 12
    for a, b in zip(_params(unchecked), _params(checked)):
        np.testing.assert_array_equal(a, b)
    assert checked.test == unchecked.test
    # the longest batches ran on the executable the check compiled, and only they did
    assert calls and len(set(calls)) == 1


class _Refused:
    """A lowered step that the compiler refuses, as the TPU compiler does over HBM."""

    def compile(self):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 18.49G of 15.75G "
            "hbm. Exceeded hbm capacity by 2.74G.\nTotal hbm usage >= 18.49G:")


def test_the_compilers_own_refusal_is_reported_with_the_levers():
    config = small_config()
    with pytest.raises(StepDoesNotFitError, match="Used 18.49G of 15.75G hbm") as raised:
        check_step_fits(_Refused(), None, config, 4, (8, 2, 512))
    assert "mesh.fsdp=-1: shard params and optimizer state over all 4 devices" in str(raised.value)


def test_advice_leaves_out_settings_already_taken():
    config = small_config(grad_accum_steps=8)  # microbatches of one pair
    config.model.lora.rank = 16
    config.model.remat = "full"
    config.model.dtype = "bfloat16"
    config.mesh.fsdp = -1
    advice = " ".join(fit_advice(config, num_devices=8))
    for taken in ("lora", "remat", "grad_accum_steps", "dtype", "mesh.fsdp"):
        assert taken not in advice
    assert "data.max_length" in advice


def test_no_limit_on_the_cpu():
    assert memory.device_memory_limit(jax.sharding.Mesh(np.array(jax.devices()), ("d",))) is None


def test_gpu_memory_fraction_is_claimed_unless_the_environment_sets_it(monkeypatch):
    from hafrm_jax.distributed import claim_gpu_memory

    env = {}
    claim_gpu_memory(env=env)
    assert env == {"XLA_CLIENT_MEM_FRACTION": "0.95"}
    for name in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION"):  # the user's wins
        env = {name: "0.5"}
        claim_gpu_memory(env=env)
        assert env == {name: "0.5"}  # and never both: jax refuses that
    for name in ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION"):
        monkeypatch.delenv(name, raising=False)
    assert any("XLA_CLIENT_MEM_FRACTION=0.95" in a for a in fit_advice(small_config(), 1, "gpu"))
    assert not any("MEM_FRACTION" in a for a in fit_advice(small_config(), 1, "tpu"))
    monkeypatch.setenv("XLA_CLIENT_MEM_FRACTION", "0.9")
    assert not any("MEM_FRACTION" in a for a in fit_advice(small_config(), 1, "gpu"))
