"""`python train.py` as a user runs it: flags, overrides, output, and a misspelt key."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = ["--config.train.steps=4", "--config.train.eval_every=2", "--config.data.num_train=64",
         "--config.data.num_validation=32", "--config.data.num_test=32",
         "--config.train.batch_size=8", "--config.optim.warmup_steps=1",
         "--config.model.num_layers=1"]


def run_train(*args):
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_train_cli_with_overrides(tmp_path):
    out = run_train(f"--workdir={tmp_path}", "--config.train.method=baseline",
                    "--config.train.seed=3", "--config.data.label_noise=0.25", *SMALL)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "held-out test accuracy (reward head)" in out.stdout
    assert '"method": "baseline"' in (tmp_path / "results.json").read_text()
    assert '"flipped_train_pairs": 16' in (tmp_path / "results.json").read_text()


def test_misspelt_override_fails_before_training(tmp_path):
    out = run_train(f"--workdir={tmp_path}", "--config.train.stpes=4")
    assert out.returncode != 0
    assert "stpes" in out.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_process_flags_without_a_coordinator_are_refused(monkeypatch):
    """--num_processes / --process_id alone would start independent jobs on one workdir."""
    from hafrm_jax import distributed

    for name in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                 "JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False
    with pytest.raises(ValueError, match="need --coordinator_address"):
        distributed.initialize(num_processes=2, process_id=1)
    calls = []
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setattr(distributed.jax.distributed, "initialize",
                        lambda **kwargs: calls.append(kwargs))
    distributed.initialize(num_processes=2, process_id=1)
    assert calls == [{"coordinator_address": None, "num_processes": 2, "process_id": 1}]


def test_the_resume_hint_repeats_the_command_with_its_overrides():
    """A stopped run resumes only with the same data and model settings: the printed command
    keeps every --config flag as given, on the run's workdir."""
    sys.path.insert(0, str(ROOT))
    from train import resume_command

    argv = ["train.py", "--config=configs/hh.py", "--workdir", "runs/old",
            "--config.data.label_noise=0.2", "--config.data.hub.path=my org/hh"]
    assert resume_command(argv, "runs/a b") == (
        "python train.py --config=configs/hh.py --config.data.label_noise=0.2 "
        "'--config.data.hub.path=my org/hh' '--workdir=runs/a b'")
    assert resume_command(["train.py", "--workdir=runs/x"], "runs/x") == \
        "python train.py --workdir=runs/x"


FAULTS_PER_CALL = """
import resource
import jax, jax.numpy as jnp
from hafrm_jax import distributed

@jax.jit
def step(x):  # [1024, 4096] float32: ~50 MB of temporaries a call, one malloc'd block
    y = jnp.cumsum(jnp.sin(x), axis=0)
    return (y * jnp.cos(y)).sum(axis=1)

def faults_per_call(x, calls=16, warmup=8):
    for _ in range(warmup):  # each worker thread that runs it sizes its heap once
        step(x).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        step(x).block_until_ready()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls

x = jnp.ones((1024, 4096))
default = faults_per_call(x)
applied = distributed.keep_cpu_buffers()
print(default, applied, faults_per_call(x))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")
def test_cpu_buffers_are_not_page_faulted_in_again_every_call():
    """XLA:CPU mallocs a call's temporaries; glibc's defaults hand ~50 MB back to the kernel
    after each call, so the next one page-faults it in again (12.5k faults a call on jax 0.10).
    keep_cpu_buffers keeps them (in a process of its own: mallopt is process-wide)."""
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_CALL], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    default, applied, kept = out.stdout.split()
    assert applied == "True"
    assert float(default) > 5_000  # tens of MB again, every call (jax 0.10: 12.5k, 0.11: 8.5k)
    assert float(kept) < float(default) / 4, out.stdout


def test_cpu_buffers_are_left_alone_on_accelerators(monkeypatch):
    """On GPU and TPU, XLA's own allocator holds the buffers: malloc is not touched."""
    from hafrm_jax import distributed

    monkeypatch.setattr(distributed.jax, "default_backend", lambda: "gpu")
    assert distributed.keep_cpu_buffers() is False
