"""Preemption, kills, non-finite steps, resume guards, retention, and what the run writes."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.train.test_loop import small_config

from hafrm_jax import configuration
from hafrm_jax.checkpoint import RunCheckpoints, abstract_like
from hafrm_jax.train.loop import NonFiniteError, train_and_evaluate
from hafrm_jax.workdir import load_run

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
LONG = ["--config.model.num_layers=1", "--config.model.hidden_size=32",
        "--config.model.intermediate_size=64", "--config.data.num_train=512",
        "--config.data.num_validation=32", "--config.data.num_test=32",
        "--config.train.batch_size=8", "--config.train.steps=300",
        "--config.train.eval_every=100", "--config.train.checkpoint_every=25",
        "--config.optim.warmup_steps=5"]


def train_cli(workdir, *extra, wait=True, env=None):
    cmd = [sys.executable, "train.py", f"--workdir={workdir}", *LONG, *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)


def final_params(workdir):
    run = load_run(str(workdir), "latest")
    return run.step, jax.tree_util.tree_leaves(jax.device_get(run.params))


def assert_finished_like(workdir, uninterrupted):
    """The interrupted-then-resumed run ended where, and as, the uninterrupted one did."""
    step, params = final_params(workdir)
    assert step == 300
    for a, b in zip(params, uninterrupted[1]):
        np.testing.assert_array_equal(a, b)


def wait_for_training(workdir, proc, rows=2):
    """Until metrics.jsonl has `rows` training rows (the loop is running)."""
    path = os.path.join(workdir, "metrics.jsonl")
    for _ in range(600):
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read()[-3000:])
        if os.path.exists(path) and sum("train/loss" in line for line in open(path)) >= rows:
            return
        time.sleep(0.1)
    raise AssertionError("training did not start")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("straight") / "run"
    done = train_cli(workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return final_params(workdir)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_and_resumes(tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    proc = train_cli(workdir, wait=False)
    wait_for_training(str(workdir), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped at step" in out
    stopped_at = int(out.split("stopped at step ")[1].split(";")[0])
    assert 0 < stopped_at < 300
    assert load_run(str(workdir), "latest").step == stopped_at  # checkpointed where it stopped
    resumed = train_cli(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_finished_like(workdir, uninterrupted)


@pytest.mark.slow
def test_sigkill_at_a_random_point_then_resume(tmp_path, uninterrupted):
    workdir = tmp_path / "run"
    proc = train_cli(workdir, wait=False)
    wait_for_training(str(workdir), proc, rows=random.Random().randint(2, 25))
    proc.kill()  # SIGKILL: no handler runs, a save may be cut in half
    proc.communicate()
    resumed = train_cli(workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_finished_like(workdir, uninterrupted)
    leftovers = [n for n in os.listdir(workdir / "checkpoints") if not n.isdigit()]
    assert all("tmp" not in n for n in leftovers), leftovers


def test_non_finite_updates_are_skipped_then_stop_the_run(tmp_path):
    # a learning rate of 1e30 sends the params to inf on the first update; every later loss
    # is NaN: those updates are skipped, and the run stops after max_consecutive_skips of them
    config = small_config(steps=12, log_every=1, max_consecutive_skips=3)
    config.optim.learning_rate = 1e30
    with pytest.raises(NonFiniteError, match="the last 3 updates had a non-finite loss"):
        train_and_evaluate(config, str(tmp_path / "run"))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    skipped = [r["train/optim/skipped"] for r in rows if "train/loss" in r]
    assert skipped[0] == 0 and skipped[-3:] == [1, 1, 1]


def test_skipped_update_leaves_params_alone():
    from hafrm_jax.objective import LossConfig, ObjectiveConfig
    from hafrm_jax.model.config import preset
    from hafrm_jax.sharding import DEFAULT_RULES, make_mesh
    from hafrm_jax.train.optimizer import make_optimizer
    from hafrm_jax.train.state import create_train_state, init_params
    from hafrm_jax.train.step import train_step
    from tests.conftest import make_pair_batch

    model = preset("tiny", num_layers=1, hidden_size=32, intermediate_size=64)
    mesh = make_mesh()
    optimizer, schedule = make_optimizer(small_config().optim, 10)
    params, sh = init_params(model, 0, mesh, DEFAULT_RULES)
    state, _ = create_train_state(params, sh, optimizer, 0, mesh)
    batch = make_pair_batch(np.random.default_rng(0), 4, 12, model.vocab_size)
    batch["ref_logps"] = np.full((4, 2), np.nan, np.float32)
    step = jax.jit(lambda s, b: train_step(s, b, None, loss_config=LossConfig(
        model, ObjectiveConfig("haf")), optimizer=optimizer, schedule=schedule,
        grad_accum_steps=1))
    skipped, metrics = step(state, batch)
    assert int(skipped.skipped) == 1 and int(skipped.skip_streak) == 1
    assert int(metrics["optim/skipped"]) == 1 and int(skipped.step) == 1
    for a, b in zip(jax.tree_util.tree_leaves(skipped.params), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)
    batch["ref_logps"] = np.full((4, 2), -30.0, np.float32)
    taken, _ = step(skipped, batch)
    assert int(taken.skipped) == 1 and int(taken.skip_streak) == 0
    assert not np.array_equal(jax.tree_util.tree_leaves(taken.params)[0],
                              jax.tree_util.tree_leaves(params)[0])


def test_resume_refused_when_the_run_changed(tmp_path):
    workdir = str(tmp_path / "run")
    train_and_evaluate(small_config(steps=4), workdir)
    with pytest.raises(configuration.ConfigError, match="train.seed"):
        train_and_evaluate(small_config(steps=6, seed=1), workdir)
    changed_shape = small_config(steps=6)
    changed_shape.model.num_layers = 2
    with pytest.raises(configuration.ConfigError, match="num_layers"):
        train_and_evaluate(changed_shape, workdir)
    fewer_pairs = small_config(steps=6)
    fewer_pairs.data.num_train = 128  # other data: refused
    with pytest.raises(configuration.ConfigError, match="data.num_train"):
        train_and_evaluate(fewer_pairs, workdir)
    config_json = (tmp_path / "run" / "config.json").read_text()
    no_clipping = small_config(steps=6)
    no_clipping.optim.max_grad_norm = 0.0  # another optimizer state: refused, config kept
    with pytest.raises(configuration.ConfigError, match="does not match the training state"):
        train_and_evaluate(no_clipping, workdir)
    assert (tmp_path / "run" / "config.json").read_text() == config_json
    longer = train_and_evaluate(small_config(steps=6), workdir)  # more steps: allowed
    assert longer.step == 6
    allowed = small_config(steps=8, seed=1, allow_config_change=True)
    assert train_and_evaluate(allowed, workdir).step == 8
    (tmp_path / "run" / "model_config.json").write_text('{"hidden_size": 32,\n')  # damaged
    damaged = r"run/model_config.json: not valid JSON at line 2, column 1"
    with pytest.raises(configuration.ConfigError, match=damaged):
        train_and_evaluate(small_config(steps=10, seed=1, allow_config_change=True), workdir)
    with pytest.raises(configuration.ConfigError, match=damaged):
        load_run(workdir)


def test_retention_keeps_last_k_and_the_best(tmp_path):
    config = small_config(steps=12, checkpoint_every=2, eval_every=2, keep_checkpoints=2)
    train_and_evaluate(config, str(tmp_path))
    assert sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit()) == [10, 12]
    best = [n for n in os.listdir(tmp_path / "best") if n.isdigit()]
    assert len(best) == 1
    meta = json.loads((tmp_path / "results.json").read_text())
    assert meta["best_step"] == int(best[0])


def test_resume_refused_on_another_pair_count_or_an_old_multi_host_order():
    """Batches are drawn over the whole split, so any number of hosts continues a run; another
    number of pairs would not, nor would this version continue a several-host run of a version
    in which each host shuffled its own share (checkpoints without "data_order")."""
    from hafrm_jax.train.loop import DATA_ORDER, check_same_data_order

    meta = {"train_pairs": 256, "process_count": 2, "data_order": DATA_ORDER}
    check_same_data_order(meta, 256, "w")  # on 1, 2 or 8 hosts alike: no host count is passed
    check_same_data_order({}, 100, "w")  # an older checkpoint: nothing to compare
    check_same_data_order({"train_pairs": 256, "process_count": 1}, 256, "w")  # old, one host
    with pytest.raises(configuration.ConfigError, match="256 training pairs; this job has 128"):
        check_same_data_order(meta, 128, "w")
    with pytest.raises(configuration.ConfigError, match="trained on 2 hosts by an older version"):
        check_same_data_order({"train_pairs": 256, "process_count": 2}, 256, "w")


def test_best_params_survive_a_kill_between_best_and_state_saves(tmp_path):
    """The best params a state refers to stay on disk until a newer state has committed."""
    params = {"w": jnp.ones((4,))}
    checkpoints = RunCheckpoints(str(tmp_path), keep=2)
    checkpoints.save_best(4, params, {"step": 4})
    checkpoints.save(4, params, {"best_step": 4})
    checkpoints.save_best(8, jax.tree_util.tree_map(lambda x: 2 * x, params), {"step": 8})
    checkpoints.wait()  # killed here: no state at step 8
    assert checkpoints.has_best(4) and checkpoints.has_best(8)
    checkpoints.close()
    resumed = RunCheckpoints(str(tmp_path), keep=2)
    assert resumed.latest_step() == 4
    resumed.discard_best_after(4)  # as the loop resumes
    restored, meta = resumed.restore_best(abstract_like(params))
    assert meta["step"] == 4 and float(restored["w"][0]) == 1.0
    resumed.save_best(8, params, {"step": 8})
    resumed.save(8, params, {"best_step": 8})
    resumed.save(10, params, {"best_step": 8})  # state 8 committed: best 4 is spare
    resumed.wait()
    assert not resumed.has_best(4) and resumed.has_best(8)
    resumed.close()


def test_config_errors_before_anything_runs(tmp_path):
    config = small_config()
    config.train.stpes = 3
    with pytest.raises(configuration.ConfigError, match="unknown config key 'train.stpes'"):
        train_and_evaluate(config, str(tmp_path / "a"))
    import ml_collections

    data = json.loads(small_config().to_json())
    data["train"]["batch_size"] = "eight"
    with pytest.raises(configuration.ConfigError, match="train.batch_size' must be of type int"):
        train_and_evaluate(ml_collections.ConfigDict(data), str(tmp_path / "b"))
    config = small_config(batch_size=6, grad_accum_steps=4)
    with pytest.raises(configuration.ConfigError, match="not divisible"):
        train_and_evaluate(config, str(tmp_path / "c"))
    bad = {"d": ("mesh.fsdp", 0, "each must be a positive size or -1"),
           "e": ("model.dtype", "foo", "model.dtype='foo'"),
           "f": ("model.num_layers", 0, "must be at least 1"),
           "g": ("data.num_validation", 0, "data.num_validation=0"),
           "h": ("mesh.rules", (("act_batch", "dp"),), "not in the mesh"),
           "i": ("mesh.data", 3, "3 x fsdp=1 x tensor=1 = 3 devices")}
    for name, (key, value, message) in bad.items():
        config = small_config()
        group, field = key.split(".")
        config[group][field] = value
        with pytest.raises(configuration.ConfigError, match=message):
            train_and_evaluate(config, str(tmp_path / name))
    for name in ("a", "b", "c", *bad):  # refused before a single file was written
        assert not os.path.exists(tmp_path / name)


@pytest.mark.slow
def test_files_are_safe_and_stay_in_the_workdir(tmp_path):
    cwd, home, tmp = tmp_path / "cwd", tmp_path / "home", tmp_path / "tmp"
    for d in (cwd, home, tmp):
        d.mkdir()
    env = dict(os.environ, HOME=str(home), TMPDIR=str(tmp), XDG_CACHE_HOME=str(home / ".cache"),
               PYTHONPATH=str(ROOT))
    # No --config: the default recipe is found from any working directory.
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--workdir=run", *LONG,
                           "--config.train.steps=10"], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.listdir(cwd) == ["run"]
    assert not os.listdir(home) and not os.listdir(tmp)
    forbidden = (".pkl", ".pickle", ".npy", ".npz", ".pt", ".bin", ".pth")
    for folder, _, files in os.walk(cwd / "run"):
        for name in files:
            assert not name.endswith(forbidden), os.path.join(folder, name)
            with open(os.path.join(folder, name), "rb") as f:
                head = f.read(2)
            assert not (head[:1] == b"\x80" and head[1:2] in bytes(range(2, 6))), name  # pickle
