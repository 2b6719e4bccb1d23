"""The command lines' error reporting: the user's mistakes in one line, bugs with a traceback."""

import json
import subprocess
import sys

import pytest

from tests.test_entry import ROOT, SMALL, run_train

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


def test_a_message_over_several_lines_is_joined(monkeypatch):
    def main(argv):  # what resolve_checkpoint raises offline, quoting the hub client's error
        raise FileNotFoundError("model.name_or_path='org/model' is neither a local directory nor "
                                "a hub model that could be downloaded (LocalEntryNotFoundError: "
                                "Got: ConnectError\nAn error happened)\n")

    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main)
    assert exit_info.value.code.endswith("(LocalEntryNotFoundError: Got: ConnectError An error "
                                         "happened)")


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


@pytest.mark.parametrize("args, message", [
    # The default recipe: ml_collections applies the override while train.py defines the flag.
    (["--config.train.stpes=4"],
     "--config.train.stpes=4: unknown config key 'train.stpes' (did you mean train.steps?)"),
    # A recipe given: the override is applied while absl parses the flags.
    (["--config=configs/default.py", "--config.trian.steps=4"],
     "--config.trian.steps=4: unknown config key 'trian.steps' (did you mean train.steps?)"),
    (["--config.data.options.single_turn=True"],
     "--config.data.options.single_turn=True: the recipe sets no data.options.single_turn; "
     "data.options takes new keys only as a whole group, e.g. "
     "--config.data.options=\"{'single_turn': True}\" (replacing the recipe's)"),
    (["--config", "configs/nope.py:arg"], "--config configs/nope.py:arg: no such config file"),
])
def test_config_flag_mistakes_are_one_line(args, message):
    out = run_train(*args)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [f"train.py: error: {message}"]


def test_an_override_without_its_config_is_one_line(tmp_path):
    # eval.py's --config has no default recipe (the workdir's config is read instead).
    out = subprocess.run([sys.executable, "eval.py", f"--workdir={tmp_path}",
                          "--config.data.max_length=64"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        "eval.py: error: --config.data.max_length=64: overrides a key of --config, which is not "
        "given (give --config=<recipe file> too)"]


def test_a_recipe_without_get_config_is_one_line(tmp_path):
    recipe = tmp_path / "recipe.py"
    recipe.write_text("import ml_collections\n\n\ndef config():  # not get_config\n"
                      "    return ml_collections.ConfigDict()\n")
    out = run_train(f"--config={recipe}", "--config.train.steps=4")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        f"train.py: error: --config={recipe}: the recipe defines no get_config() (a config file "
        "returns its ConfigDict from get_config())"]


def test_a_free_form_group_takes_new_keys_whole(tmp_path):
    # What the message above suggests works: options the default recipe does not set.
    out = run_train(f"--workdir={tmp_path}", "--config.data.options={'single_turn': True}",
                    *SMALL)
    assert out.returncode == 0, out.stderr[-2000:]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["data"]["options"] == {"single_turn": True}


def test_the_config_flag_is_in_the_scripts_short_help():
    out = run_train("--helpshort")  # absl's help exits with status 1
    assert "--config: Training recipe: a configs/*.py file." in out.stdout
