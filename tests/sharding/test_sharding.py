"""Meshes, shardings, cross-mesh restore and a two-process job, on fake CPU devices.

Each test runs a script of this folder in a fresh process, because the device count
(--xla_force_host_platform_device_count) is fixed when JAX starts.
"""

import os
import socket

import pytest

from tests.sharding.run import last_json, run_script

# float32 reductions summed in another order across shards: agreement to ~1e-6 relative
TOLERANCE = 2e-5


def test_loss_and_gradients_equal_on_every_mesh():
    out = run_script("mesh_equivalence.py")
    assert set(out["meshes"]) == {"8x1x1", "1x8x1", "2x2x2", "1x4x2", "2x1x4"}
    for mesh, errors in out["meshes"].items():
        assert errors["loss_rel_err"] < TOLERANCE, (mesh, errors)
        assert errors["grad_max_rel_err"] < TOLERANCE, (mesh, errors)
    # FSDP keeps each device's activations to its share of the batch, as data parallelism does
    # (params are gathered, not activations): without the rules in force while tracing, the
    # activations' embedding axis took the fsdp axis and every device held the whole batch's
    # (4.9x the temporary memory of 8x1x1 on 1x8x1)
    temp = {mesh: errors["temp_bytes"] for mesh, errors in out["meshes"].items()}
    assert temp["1x8x1"] < 1.2 * temp["8x1x1"], temp
    # the LM-head and MLP kernels (model.lm_head_kernel, model.mlp_kernel = pallas) per device
    # on its rows of the batch
    assert set(out["kernel_meshes"]) == {"8x1x1", "2x4x1"}
    for mesh, errors in out["kernel_meshes"].items():
        assert errors["loss_rel_err"] < TOLERANCE, (mesh, errors)
        assert errors["grad_max_rel_err"] < TOLERANCE, (mesh, errors)


def test_parameter_shardings_follow_the_rules():
    out = run_script("param_shardings.py")
    mesh = out["2x2x2"]  # rules: embed -> fsdp; vocab, heads, kv_heads, mlp -> tensor
    assert mesh["backbone/embed_tokens/embedding"] == ["tensor", "fsdp"]
    assert mesh["backbone/layers/self_attn/q_proj/kernel"] == [None, "fsdp", "tensor", None]
    assert mesh["backbone/layers/self_attn/q_proj/bias"] == [None, "tensor", None]
    assert mesh["backbone/layers/self_attn/k_proj/kernel"] == [None, "fsdp", "tensor", None]
    assert mesh["backbone/layers/self_attn/o_proj/kernel"] == [None, "tensor", None, "fsdp"]
    assert mesh["backbone/layers/mlp/gate_proj/kernel"] == [None, "fsdp", "tensor"]
    assert mesh["backbone/layers/mlp/down_proj/kernel"] == [None, "tensor", "fsdp"]
    assert mesh["backbone/layers/input_layernorm/scale"] == [None, None]
    assert mesh["lm_head/kernel"] == ["fsdp", "tensor"]
    assert mesh["reward_head/kernel"] == ["fsdp", None]
    # 2 KV heads cannot be split 4 ways: that dimension is replicated, the others still shard
    assert out["custom_rules_1x8x1"] == ["tensor", None]  # config rules: embed not on fsdp
    assert out["moment_specs_match"]  # Adam's moments sharded like their params
    narrow = out["1x2x4"]
    assert narrow["backbone/layers/self_attn/k_proj/kernel"] == [None, "fsdp", None, None]
    assert narrow["backbone/layers/self_attn/q_proj/kernel"] == [None, "fsdp", "tensor", None]


@pytest.mark.slow
def test_checkpoint_written_on_one_mesh_restores_on_another(tmp_path):
    workdir = str(tmp_path / "run")
    trained = run_script("checkpoint_reshard.py", workdir, "train", "1", "4", "2")
    assert trained["q_proj"] == [None, "fsdp", "tensor", None]
    on_2x4 = run_script("checkpoint_reshard.py", workdir, "restore", "1", "2", "4")
    on_one = run_script("checkpoint_reshard.py", workdir, "restore", "1", "1", "1", devices=1)
    assert on_2x4["step"] == on_one["step"] == 3
    assert on_2x4["digest"] == trained["digest"] == on_one["digest"]
    assert on_2x4["q_proj"] == [None, "fsdp", "tensor", None]  # now 2-way fsdp, 4-way tensor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(workdir: str, *args: str) -> list[dict]:
    """two_process.py's run as a job of two processes of 4 CPU devices each."""
    port = str(_free_port())
    procs = [run_script("two_process.py", port, str(i), workdir, "2", *args, devices=4,
                        wait=False) for i in range(2)]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-4000:]
        outs.append(last_json(stdout))
    return outs


@pytest.mark.slow
def test_two_processes_train_one_model_as_one_process_does(tmp_path):
    """Two hosts train the run one host trains (every step's batch is drawn over the whole
    split), and a run resumes on another number of hosts as the same run."""
    outs = _two_processes(str(tmp_path / "run"))
    assert [o["process"] for o in outs] == [0, 1]
    assert all(o["devices"] == 8 and o["local_devices"] == 4 and o["step"] == 4 for o in outs)
    assert outs[0]["train_loss"] == outs[1]["train_loss"]
    assert outs[0]["test"] == outs[1]["test"] and outs[0]["test"]["num_pairs"] == 20
    # metrics are written once: process 0's rows only, each step once
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert sum('"train/loss"' in r for r in rows) == 2
    # tokenised splits: the training split once (process 0's), each host's validation and test
    names = sorted(f.split("-")[0] for f in os.listdir(tmp_path / "run" / "tokenized"))
    assert names == ["test"] * 2 + ["train"] + ["validation"] * 2

    # one process of 8 devices, the same mesh: the same batches, so the same run (reductions
    # of the cross-process collectives summed in another order: ~1e-6)
    alone = run_script("two_process.py", "0", "0", str(tmp_path / "alone"), "1")
    assert alone["step"] == 4 and alone["local_devices"] == 8
    _assert_same_run(outs[0], alone)
    # started alone, stopped after step 2, resumed by two processes
    first = run_script("two_process.py", "0", "0", str(tmp_path / "moved"), "1", "2")
    assert first["step"] == 2 and first["test"] is None
    moved = _two_processes(str(tmp_path / "moved"))
    assert all(o["step"] == 4 for o in moved)
    # the training split read back from the run alone; the hosts' shares of the others new
    names = sorted(f.split("-")[0] for f in os.listdir(tmp_path / "moved" / "tokenized"))
    assert names == ["test"] * 3 + ["train"] + ["validation"] * 3
    _assert_same_run(moved[0], alone)


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=TOLERANCE)
    for split in ("validation", "test"):
        assert a[split]["num_pairs"] == b[split]["num_pairs"]
        assert a[split]["accuracy"] == b[split]["accuracy"], split
        assert a[split]["reward_margin"] == pytest.approx(b[split]["reward_margin"],
                                                          rel=TOLERANCE, abs=1e-6), split
