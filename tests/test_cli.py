"""The command lines' error reporting: the user's mistakes in one line, bugs with a traceback."""

import subprocess
import sys

import pytest

from tests.test_entry import ROOT, run_train

from hafrm_jax import cli
from hafrm_jax.configuration import ConfigError
from hafrm_jax.data.readers import DataError, RecordError


@pytest.mark.parametrize("error", [
    ConfigError("train.method='ppo': expected one of ('haf', 'baseline', 'dpo')"),
    DataError("pairs.jsonl:2", RecordError("missing_field", "missing", "rejected")),
    FileNotFoundError("data.files.train: no file matches 'x*.jsonl'"),
])
def test_a_user_error_exits_with_one_line(monkeypatch, error):
    def main(argv):
        raise error

    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main)
    assert exit_info.value.code == f"train.py: error: {error}"  # printed to stderr, status 1


def test_a_bug_keeps_its_traceback(monkeypatch):
    def main(argv):
        raise KeyError("a bug, not the user's input")

    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(KeyError, match="a bug"):
        cli.run(main)


def test_train_py_reports_a_bad_setting_in_one_line(tmp_path):
    out = run_train(f"--workdir={tmp_path}", "--config.train.method=ppo")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "train.py: error: train.method='ppo': expected one of ('haf', 'baseline', 'dpo')")
    assert "Traceback" not in out.stderr


def test_eval_py_reports_a_missing_checkpoint_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "eval.py", f"--checkpoint={tmp_path / 'none'}",
                          "--input=x.jsonl"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == (  # eval's setting, not training's
        f"eval.py: error: checkpoint='{tmp_path / 'none'}' is not a directory")
    assert "Unable to initialize backend" not in out.stderr  # JAX's chatter is not logged
