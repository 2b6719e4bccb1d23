"""The workdir's compilation cache: where it goes, JAX's setting restored after a run, a resumed
run reading what the stopped one compiled, and a cut entry costing a compile, not the run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from tests.train.test_loop import small_config

from hafrm_jax.train.compilation_cache import persistent_compilation_cache
from hafrm_jax.train.loop import train_and_evaluate
from hafrm_jax.train.run_files import cache_directory


@pytest.fixture
def cache_every_program():
    """JAX stores only programs that took >= 1 s to compile; most of these take less. The
    test starts with no program compiled in this process."""
    jax.clear_caches()
    before = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before)


def _program(x):
    return jnp.tanh(x) @ x.T


def test_the_cache_goes_in_the_workdir_or_an_absolute_path_or_nowhere():
    assert cache_directory("compilation_cache", "/runs/a") == "/runs/a/compilation_cache"
    assert cache_directory("/shared/xla", "/runs/a") == "/shared/xla"
    assert cache_directory("~/xla", "/runs/a") == os.path.expanduser("~/xla")
    assert cache_directory("", "/runs/a") is None


def test_a_program_is_written_then_read_and_jax_is_left_as_it_was(tmp_path,
                                                                   cache_every_program):
    x, directory = np.arange(64.0, dtype=np.float32).reshape(8, 8), str(tmp_path / "cache")
    with persistent_compilation_cache(directory) as first:
        assert jax.config.jax_compilation_cache_dir == directory
        expected = jax.jit(_program)(x)
    assert not jax.config.jax_compilation_cache_dir  # later compiles stay out of the workdir
    assert first.programs >= 1 and first.read == 0 and os.listdir(directory)
    jax.clear_caches()  # as a new process
    with persistent_compilation_cache(directory) as second:
        np.testing.assert_array_equal(jax.jit(_program)(x), expected)
    assert second.read == second.programs >= 1
    assert "read from" in second.summary()


def test_a_cut_entry_is_compiled_again(tmp_path, cache_every_program):
    """A run killed while writing an entry leaves part of it: the next run warns, compiles."""
    x, directory = np.ones((8, 8), np.float32), str(tmp_path / "cache")
    with persistent_compilation_cache(directory):
        expected = jax.jit(_program)(x)
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    jax.clear_caches()
    with persistent_compilation_cache(directory) as report, \
            pytest.warns(UserWarning, match="persistent compilation cache"):
        np.testing.assert_array_equal(jax.jit(_program)(x), expected)
    assert report.read == 0 and report.programs >= 1


def test_jax_own_cache_is_kept_and_none_is_off(tmp_path):
    own = str(tmp_path / "own")
    jax.config.update("jax_compilation_cache_dir", own)
    try:
        with persistent_compilation_cache(str(tmp_path / "run")) as report:
            assert jax.config.jax_compilation_cache_dir == own
        assert report.directory == own and jax.config.jax_compilation_cache_dir == own
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        jax_cache.reset_cache()
    with persistent_compilation_cache(None) as report:
        assert not jax.config.jax_compilation_cache_dir
        jax.jit(_program)(np.ones((4, 4), np.float32))
    assert report.directory is None and report.read == 0 and report.programs >= 1
    assert "no compilation cache" in report.summary()
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_reads_the_programs_the_stopped_run_compiled(tmp_path,
                                                                   cache_every_program):
    config, workdir = small_config(steps=6), str(tmp_path / "run")
    stopped = train_and_evaluate(config, workdir, stop_condition=lambda step: step == 3)
    assert stopped.compiling.read == 0 and os.listdir(os.path.join(workdir,
                                                                    "compilation_cache"))
    jax.clear_caches()  # as a new process
    resumed = train_and_evaluate(config, workdir)
    # at least the training step and the scoring pass (validation, test) come from the cache
    assert resumed.completed and resumed.compiling.read >= 2
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["compiling"]
    assert saved["read_from_cache"] == resumed.compiling.read
    assert saved["cache"] == os.path.join(workdir, "compilation_cache")

    config.train.compilation_cache_dir = ""  # off: the same run, every program compiled
    straight = train_and_evaluate(config, str(tmp_path / "straight"))
    assert straight.compiling.read == 0 and straight.compiling.directory is None
    assert not (tmp_path / "straight" / "compilation_cache").exists()
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(resumed.state.params)),
                    jax.tree_util.tree_leaves(jax.device_get(straight.state.params))):
        np.testing.assert_array_equal(a, b)
    assert resumed.test == straight.test
