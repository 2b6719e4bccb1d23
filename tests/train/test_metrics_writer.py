"""metrics.jsonl, TensorBoard and the optional W&B logging (a stand-in module here)."""

import json
import sys
import types

from hafrm_jax.train.metrics_writer import MetricsWriter


def test_jsonl_tensorboard_and_wandb(tmp_path, monkeypatch):
    logged = []
    run = types.SimpleNamespace(log=lambda m, step: logged.append((step, m)),
                                finish=lambda: logged.append("finished"))
    calls = {}

    def init(**kwargs):
        calls.update(kwargs)
        return run

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    writer = MetricsWriter(str(tmp_path), wandb_project="demo", run_config={"a": 1})
    writer.write(10, {"train/loss": 0.5, "eval/accuracy": float("nan")})
    writer.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["step"] == 10 and row["train/loss"] == 0.5
    assert list((tmp_path / "tensorboard").iterdir())
    assert calls["project"] == "demo" and calls["id"] == tmp_path.name and calls["config"] == {"a": 1}
    assert logged[0][0] == 10 and logged[-1] == "finished"


def test_resume_drops_rows_past_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "train/loss": 1.0}) + "\n" for s in (5, 10, 15)))
    MetricsWriter(str(tmp_path), resume_step=10).close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [5, 10]


def test_resume_drops_a_row_torn_by_a_kill(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 5, "train/loss": 1.0}) + "\n" + '{"step": 10, "trai')
    MetricsWriter(str(tmp_path), resume_step=10).close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [5]
    assert "dropped 1 unreadable row" in caplog.text
