"""The experiment harness end to end at tiny size: runs, table, plots, and reuse on a rerun."""

import os

import pytest

from tests.train.test_loop import small_config

from hafrm_jax.configuration import ConfigError
from hafrm_jax.experiments import Variant, run_grid, summarise, write_report


def test_grid_report_and_resume(tmp_path):
    config = small_config(steps=4, eval_every=2)
    # (the baseline's label and run: test_report_only_leaves_out_unfinished_runs)
    variants = [Variant("haf"), Variant("haf", 1.0)]
    runs = run_grid(config, variants, seeds=[0], noise_rates=[0.0, 0.25], out=str(tmp_path))
    assert len(runs) == 4
    # One set of tokenised splits for the grid: method and label noise change no token.
    assert sorted(f.split("-")[0] for f in os.listdir(tmp_path / "tokenized")) == [
        "test", "train", "validation"]
    assert not any(os.path.exists(os.path.join(r["workdir"], "tokenized")) for r in runs)
    assert config.data.cache_dir == "tokenized"  # the caller's config is left as it was
    assert {r["variant"] for r in runs} == {"HaF", "HaF (alpha=1)"}
    table = summarise(runs)
    assert table["HaF"][0.25][2] == 1
    write_report(runs, table, str(tmp_path))
    report = (tmp_path / "results.md").read_text()
    assert "| HaF (alpha=1) |" in report and "noise 0.25" in report
    for plot in ("accuracy_vs_noise.png", "accuracy_vs_step.png"):
        assert os.path.getsize(tmp_path / plot) > 1000
    mtimes = {r["workdir"]: os.path.getmtime(os.path.join(r["workdir"], "results.json"))
              for r in runs}
    # Read back, also where the grid's tokenised splits go elsewhere (not a result setting).
    config.data.cache_dir = str(tmp_path / "elsewhere")
    again = run_grid(config, variants, seeds=[0], noise_rates=[0.0, 0.25], out=str(tmp_path))
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in runs]
    for r in again:  # read back, not retrained; the wall time is the run's own record
        assert os.path.getmtime(os.path.join(r["workdir"], "results.json")) == mtimes[r["workdir"]]
        assert r["seconds"] > 0 and r["device"] == "cpu x1"


def test_report_only_leaves_out_unfinished_runs(tmp_path):
    config = small_config(steps=4, eval_every=2)
    done = run_grid(config, [Variant("baseline")], seeds=[0], noise_rates=[0.0],
                    out=str(tmp_path))
    both = run_grid(config, [Variant("baseline"), Variant("dpo")], seeds=[0, 1],
                    noise_rates=[0.0], out=str(tmp_path), train_missing=False)
    assert [(r["method"], r["seed"], r["variant"]) for r in both] == [("baseline", 0, "Baseline")]
    assert both[0]["test_accuracy"] == done[0]["test_accuracy"]
    assert not os.path.exists(tmp_path / "runs" / "dpo-noise0-seed0")
    # a finished run is not reported under other settings (its folder name lacks them)
    longer = small_config(steps=6, eval_every=2)
    with pytest.raises(ConfigError, match="train.steps: 4 there, 6 here"):
        run_grid(longer, [Variant("baseline")], seeds=[0], noise_rates=[0.0], out=str(tmp_path),
                 train_missing=False)


def test_random_init_has_only_the_chance_row():
    from hafrm_jax.experiments import training_free_baselines

    assert training_free_baselines(small_config()) == {"Chance": 0.5}
