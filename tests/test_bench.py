"""The benchmark's FLOP formula and its CPU smoke mode (the only part CI runs)."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest

from bench.train_step import step_flops
from hafrm_jax.model.config import PRESETS
from tests.helpers import gpu_compile


def test_flops_formula_matches_the_pytorch_anchor():
    # ../shared/bench: Qwen2.5-0.5B HaF, 8 pairs x 1,024 tokens, 351.1 TFLOP/s at 0.1445 s/step
    assert step_flops(PRESETS["qwen2.5-0.5b"], 8, 1024, True) == pytest.approx(
        351.1e12 * 0.1445, rel=2e-3)
    # the plain reward model has no LM-head term
    assert step_flops(PRESETS["qwen2.5-0.5b"], 8, 1024, False) < step_flops(
        PRESETS["qwen2.5-0.5b"], 8, 1024, True)


def test_flops_count_a_plain_mlp_as_two_matmuls_and_the_lm_head_where_it_runs():
    phi = PRESETS["phi-2"]
    d, ff, layers, tokens = phi.hidden_size, phi.intermediate_size, phi.num_layers, 2 * 8 * 1024
    gated = dataclasses.replace(phi, mlp="gated")
    # one more [d, ff] matmul a layer, forward and backward (x 3)
    assert step_flops(gated, 8, 1024, False) - step_flops(phi, 8, 1024, False) == \
        pytest.approx(3 * layers * 2 * d * ff * tokens)
    qwen = PRESETS["qwen2.5-0.5b"]
    head = 3 * 2 * qwen.hidden_size * qwen.vocab_size * 2 * 8  # a position, every sequence
    assert step_flops(qwen, 8, 1024, True) - step_flops(qwen, 8, 1024, True, 512) == \
        pytest.approx(head * 512)
    assert step_flops(qwen, 8, 1024, True, 1024) == step_flops(qwen, 8, 1024, True)


def test_compare_torch_adds_each_pytorch_case_once():
    from bench.train_step import Case, with_torch_cases

    ours = [Case.parse(c) for c in ("qwen2.5-0.5b:haf:1024", "qwen2.5-0.5b:haf:1024+chunk=512",
                                    "qwen2.5-0.5b:haf:1024:compile", "qwen2.5-0.5b:baseline:1024")]
    specs = [c.spec() for c in with_torch_cases(ours)]
    assert specs == [c.spec() for c in ours] + ["qwen2.5-0.5b:haf:1024:eager",
                                                  "qwen2.5-0.5b:baseline:1024:eager",
                                                  "qwen2.5-0.5b:baseline:1024:compile"]


def test_a_failed_case_reports_its_error_not_the_traceback_note():
    from bench.train_step import _error_line

    output = """Traceback (most recent call last):
  File "bench/train_step.py", line 1, in <module>
    raise ValueError("inner")
ValueError: inner

The above exception was the direct cause of the following exception:

jaxlib._jax.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9 GiB.
--------------------
For simplicity, JAX has removed its internal frames from the traceback of the following exception.
"""
    assert _error_line(output, 1).startswith("jaxlib._jax.XlaRuntimeError: RESOURCE_EXHAUSTED")
    assert _error_line("Killed\n", 137) == "Killed"
    assert _error_line("", 137) == "exit status 137"


@pytest.mark.slow
def test_smoke_mode_prints_the_table():
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "bench/train_step.py", "--smoke"], cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| tiny | hafrm-jax | haf | 64 |" in out.stdout
    assert "| tiny | hafrm-jax | baseline | 64 |" in out.stdout
    assert "tiny seq 64 (hafrm-jax): HaF / plain-RM step time" in out.stdout
    assert "10 back-to-back products; one product a sample: " in out.stdout


def test_matmul_peak_is_measured_both_ways():
    """The MFU denominator times products back to back (one synchronisation a sample); the
    one-product-a-sample figure of earlier rounds comes with it, for comparison."""
    from bench.train_step import matmul_peak_tflops

    peak = matmul_peak_tflops(64, samples=3, calls=4)
    assert set(peak) == {"peak_tflops", "peak_tflops_per_call"}
    assert all(0 < v < float("inf") for v in peak.values()), peak


def test_case_specs_round_trip_and_bad_ones_are_refused():
    from bench.train_step import Case

    ours = Case.parse("qwen2.5-0.5b:haf:1024")
    theirs = Case.parse("qwen2.5-1.5b:baseline:512:compile")
    assert (ours.stack, ours.seq, ours.compile) == ("hafrm-jax", 1024, False)
    assert (theirs.stack, theirs.method, theirs.compile) == ("torch", "baseline", True)
    assert [Case.parse(c.spec()) for c in (ours, theirs)] == [ours, theirs]
    assert theirs.label() == "torch compile"
    for bad in ("qwen2.5-0.5b:dpo:1024", "qwen2.5-0.5b:haf", "qwen2.5-0.5b:haf:1024:jit",
                "qwen2.5-0.5b:haf:1024:eager+chunk=256", "qwen2.5-05b:haf:1024",
                "tiny:haf:1o24", "tiny:haf:0", "tiny:haf:-64"):
        with pytest.raises(SystemExit, match="bad case"):
            Case.parse(bad)
    variant = Case.parse("qwen2.5-0.5b:haf:1024+chunk=512+remat=none")
    assert variant.options == (("chunk", "512"), ("remat", "none"))
    assert Case.parse(variant.spec()) == variant
    assert variant.label() == "hafrm-jax chunk=512 remat=none"
    tuned = Case.parse("qwen2.5-0.5b:baseline:1024+remat=dots_attention+unroll=4+xla=cublas")
    assert tuned.options == (("remat", "dots_attention"), ("unroll", "4"), ("xla", "cublas"))
    kernels = Case.parse("qwen2.5-0.5b:haf:1024+head=pallas+tile=64x256x32")
    assert kernels.options == (("head", "pallas"), ("tile", "64x256x32"))
    for bad in ("qwen2.5-0.5b:haf:1024+chunk=big", "qwen2.5-0.5b:haf:1024+remat=all",
                "qwen2.5-0.5b:haf:1024+lr=1", "qwen2.5-0.5b:haf:1024+xla=fast",
                "qwen2.5-0.5b:haf:1024+unroll=all", "qwen2.5-0.5b:haf:1024+head=triton",
                "qwen2.5-0.5b:haf:1024+tile=64x256", "qwen2.5-0.5b:haf:1024+tile=axbxc"):
        with pytest.raises(SystemExit, match="bad option"):
            Case.parse(bad)


def test_trace_summary_sums_device_timelines_per_step():
    from bench.trace_summary import format_summary, summarize

    events = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 2, "tid": 7, "name": "thread_name", "args": {"name": "Stream #13"}},
        {"ph": "M", "pid": 2, "tid": 8, "name": "thread_name", "args": {"name": "XLA Ops"}},
        {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 10_000, "name": "python"},
    ]
    for step in range(2):  # two steps: a 3 ms gemm and two 0.5 ms fusions on the stream
        t = step * 10_000
        events += [{"ph": "X", "pid": 2, "tid": 7, "ts": t, "dur": 3_000, "name": "gemm"},
                   {"ph": "X", "pid": 2, "tid": 7, "ts": t + 3_000, "dur": 500, "name": "fusion"},
                   {"ph": "X", "pid": 2, "tid": 7, "ts": t + 4_000, "dur": 500, "name": "fusion"},
                   {"ph": "X", "pid": 2, "tid": 8, "ts": t, "dur": 3_000, "name": "dot.1"}]
    timelines = summarize(events, steps=2)
    assert [t["thread"] for t in timelines] == ["Stream #13", "XLA Ops"]  # no host timeline
    stream = timelines[0]
    assert stream["busy_ms_per_step"] == pytest.approx(4.0)
    assert [(o["name"], o["ms_per_step"], o["calls_per_step"]) for o in stream["ops"]] == [
        ("gemm", pytest.approx(3.0), 1), ("fusion", pytest.approx(1.0), 2)]
    assert stream["ops"][0]["share"] == pytest.approx(0.75)
    assert stream["categories"] == {"matmul": pytest.approx(0.75),
                                    "elementwise fusion": pytest.approx(0.25)}
    assert "| `gemm` | 3.000 | 1 | 75.0% |" in format_summary(timelines)
    assert "(matmul 75%, elementwise fusion 25%)" in format_summary(timelines)


@pytest.mark.parametrize("name,kind", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "matmul"),
    ("nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NNT", "matmul"), ("dot.187", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_knob_7", "attention"),
    ("Memcpy HtoD", "copy"), ("input_reduce_fusion_3", "reduction"),
    ("loop_multiply_fusion_12", "elementwise fusion"), ("ThunkExecutor::Execute", "other")])
def test_trace_summary_kernel_categories(name, kind):
    from bench.trace_summary import category

    assert category(name) == kind


def test_trace_summary_reads_a_real_jax_trace(tmp_path):
    import jax
    import jax.numpy as jnp

    from bench.trace_summary import find_trace, load_events, summarize

    f = jax.jit(lambda a: jnp.tanh(a @ a).sum())
    a = jnp.ones((256, 256))
    f(a).block_until_ready()
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        for _ in range(2):
            f(a).block_until_ready()
    timelines = summarize(load_events(find_trace(str(tmp_path))), steps=2)
    assert timelines and all(t["busy_ms_per_step"] > 0 for t in timelines)
    names = {o["name"] for t in timelines for o in t["ops"]}
    assert any(n.startswith(("dot", "PjitFunction")) for n in names), names


def test_fused_attention_calls_are_counted_from_the_compiled_text():
    from bench.train_step import fused_attention_calls

    hlo = "\n".join([
        '  %a = (bf16[8,1024,14,64]) custom-call(%q), custom_call_target="__cudnn$fmhaSoftmax"',
        '  %b = (bf16[8,1024,14,64]) custom-call(%q), custom_call_target="__cudnn$fmhaSoftmax"',
        '  %c = (bf16[8,1024,14,64]) custom-call(%g), '
        'custom_call_target="__cudnn$fmhaSoftmaxBackward"',
        '  %d = bf16[8] custom-call(%x), custom_call_target="__cublas$gemm"'])
    assert fused_attention_calls(hlo) == {"forward": 2, "backward": 1}


def test_roofline_counts_loop_iterations_and_matmul_flops():
    """A matmul in a 5-trip loop, compiled on CPU: one kernel launched 5 times, 2 n^3 FLOPs."""
    import jax
    import jax.numpy as jnp

    from bench.hlo_roofline import format_roofline, program_kernels

    step = jax.jit(lambda a, b: jax.lax.fori_loop(0, 5, lambda i, x: jnp.tanh(x @ b), a))
    x = jnp.ones((64, 64), jnp.float32)
    kernels = program_kernels(step.lower(x, x).compile().as_text())
    matmuls = [k for k in kernels if k.category == "matmul"]
    assert [(k.calls, k.flops) for k in matmuls] == [(5, 2 * 64 ** 3)]
    table = format_roofline(kernels, bandwidth=1e12, peak_flops=1e12)
    assert "| matmul | 1 | 5 |" in table


# Two fusions: one dynamic-slices a [1000, 10] buffer, the other updates it in place.
SLICE_AND_UPDATE_HLO = """HloModule m

%fused_slice (param_0: f32[1000,10], param_1: s32[]) -> f32[1,10] {
  %param_0 = f32[1000,10]{1,0} parameter(0)
  %param_1 = s32[] parameter(1)
  %bitcast = f32[1000,10]{1,0} bitcast(%param_0)
  %zero = s32[] constant(0)
  ROOT %ds = f32[1,10]{1,0} dynamic-slice(%bitcast, %param_1, %zero), dynamic_slice_sizes={1,10}
}

%fused_update (param_0.1: f32[1000,10], param_1.1: f32[1,10], param_2.1: s32[]) -> f32[1000,10] {
  %param_1.1 = f32[1,10]{1,0} parameter(1)
  %param_0.1 = f32[1000,10]{1,0} parameter(0)
  %param_2.1 = s32[] parameter(2)
  %zero.1 = s32[] constant(0)
  ROOT %dus = f32[1000,10]{1,0} dynamic-update-slice(%param_0.1, %param_1.1, %param_2.1, %zero.1)
}

ENTRY %main (p0: f32[1000,10], p1: s32[]) -> f32[1000,10] {
  %p0 = f32[1000,10]{1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %sliced.2 = f32[1,10]{1,0} fusion(%p0, %p1), kind=kLoop, calls=%fused_slice
  ROOT %updated.3 = f32[1000,10]{1,0} fusion(%p0, %sliced.2, %p1), kind=kLoop, calls=%fused_update
}
"""


# One fusion casting a stacked f32 [24, 8, 16] weight to bf16 and slicing out one layer of it
# (as a per-layer cast of stacked params compiles): only that layer is read, 8 x 16 f32.
CONVERT_THEN_SLICE_HLO = """HloModule m

%fused_cast_layer (param_0: f32[24,8,16]) -> bf16[8,16] {
  %param_0 = f32[24,8,16]{2,1,0} parameter(0)
  %convert = bf16[24,8,16]{2,1,0} convert(%param_0)
  %slice = bf16[1,8,16]{2,1,0} slice(%convert), slice={[3:4], [0:8], [0:16]}
  ROOT %bitcast = bf16[8,16]{1,0} bitcast(%slice)
}

ENTRY %main (p0: f32[24,8,16]) -> bf16[8,16] {
  %p0 = f32[24,8,16]{2,1,0} parameter(0)
  ROOT %layer.1 = bf16[8,16]{1,0} fusion(%p0), kind=kLoop, calls=%fused_cast_layer
}
"""


# A fusion that sets 4 entries of a [4, 1000] bf16 buffer in place (the LM head's target
# entries of d_logits): only the 4 updates are written.
SCATTER_HLO = """HloModule m

%set (a: bf16[], b: bf16[]) -> bf16[] {
  %a = bf16[] parameter(0)
  ROOT %b = bf16[] parameter(1)
}

%fused_scatter (param_0: bf16[4,1000], param_1: s32[4,2], param_2: f32[4]) -> bf16[4,1000] {
  %param_0 = bf16[4,1000]{1,0} parameter(0)
  %param_1 = s32[4,2]{1,0} parameter(1)
  %param_2 = f32[4]{0} parameter(2)
  %convert = bf16[4]{0} convert(%param_2)
  ROOT %scatter = bf16[4,1000]{1,0} scatter(%param_0, %param_1, %convert), update_window_dims={}, inserted_window_dims={0,1}, scatter_dims_to_operand_dims={0,1}, index_vector_dim=1, to_apply=%set
}

ENTRY %main (p0: bf16[4,1000], p1: s32[4,2], p2: f32[4]) -> bf16[4,1000] {
  %p0 = bf16[4,1000]{1,0} parameter(0)
  %p1 = s32[4,2]{1,0} parameter(1)
  %p2 = f32[4]{0} parameter(2)
  ROOT %targets.1 = bf16[4,1000]{1,0} fusion(%p0, %p1, %p2), kind=kInput, calls=%fused_scatter
}
"""


def test_roofline_counts_slices_and_in_place_updates_not_whole_buffers():
    from bench.hlo_roofline import array_bytes, program_kernels

    assert array_bytes("(f32[2,3]{1,0}, bf16[4]{0}, s32[])") == 24 + 8 + 4
    kernels = {k.name: k for k in program_kernels(SLICE_AND_UPDATE_HLO)}
    assert kernels["sliced.2"].bytes == 40 + 40 + 4  # result, the slice read, the index
    assert kernels["updated.3"].bytes == 40 + 40 + 4  # update written and read, the index
    (layer,) = program_kernels(CONVERT_THEN_SLICE_HLO)
    assert layer.bytes == 8 * 16 * 2 + 8 * 16 * 4  # bf16 result, one f32 layer read
    (scatter,) = program_kernels(SCATTER_HLO)
    assert scatter.bytes == 4 * 2 + 4 * 2 * 4 + 4 * 4  # bf16 updates written, indices, f32 read


def test_profile_is_matched_to_the_program_kernels():
    """Profiled ops are matched to kernels by instruction name, GPU style (`name_N` for
    `name.N`) or as is, from the timeline that matches the most; the table ranks lost time."""
    from bench.hlo_roofline import format_against_profile, match_profile, program_kernels

    kernels = program_kernels(SLICE_AND_UPDATE_HLO)
    timelines = [{"sliced.2": 0.5}, {"sliced_2": 1.0, "updated_3": 2.0, "nvjet_gemm": 5.0}]
    measured = match_profile(kernels, timelines)
    assert measured == {"sliced.2": 1.0, "updated.3": 2.0}
    table = format_against_profile(kernels, measured, bandwidth=1e9, peak_flops=1e12)
    assert table.startswith("2 of 2 kernels matched in the profile: 3.00 ms a step measured")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert rows[0].startswith("| `updated.3` |")  # the most time lost first


def test_case_options_set_the_lm_head_kernels():
    import argparse

    from bench.train_step import Case, case_model_config
    from hafrm_jax.model.head_kernel import HeadBlocks

    args = argparse.Namespace(dtype="bfloat16", remat="none", attention="xla", chunk=128,
                              unroll=0)
    tuned = case_model_config(Case.parse("qwen2.5-0.5b:haf:1024+head=pallas+tile=64x256x32"),
                              args)
    assert tuned.lm_head_kernel_blocks == HeadBlocks(64, 256, 32)
    assert case_model_config(Case.parse("qwen2.5-0.5b:haf:1024"), args).lm_head_kernel == "xla"
    launched = case_model_config(
        Case.parse("qwen2.5-0.5b:haf:1024+head=pallas+warps=4+stages=5"), args)
    assert launched.lm_head_kernel_blocks == HeadBlocks(warps=4, stages=5)  # default tile
    with pytest.raises(SystemExit, match="power of two"):
        case_model_config(Case.parse("qwen2.5-0.5b:haf:1024+head=pallas+tile=96x128x64"), args)
    with pytest.raises(SystemExit, match="warps=3"):
        case_model_config(Case.parse("qwen2.5-0.5b:haf:1024+head=pallas+warps=3"), args)
    with pytest.raises(SystemExit, match="bad option"):
        Case.parse("qwen2.5-0.5b:haf:1024+head=pallas+stages=many")


def test_case_options_set_the_mlp_kernel():
    import argparse

    from bench.train_step import Case, case_model_config

    args = argparse.Namespace(dtype="bfloat16", remat="none", attention="xla", chunk=128,
                              unroll=0)
    assert case_model_config(Case.parse("qwen2.5-0.5b:haf:1024"), args).mlp_kernel == "xla"
    assert case_model_config(Case.parse("qwen2.5-0.5b:baseline:1024+mlp=pallas"),
                             args).mlp_kernel == "pallas"
    # the kernel's backward pass would run the forward's matmul again under remat: refused by name
    with pytest.raises(SystemExit, match="remat='dots'"):
        case_model_config(Case.parse("qwen2.5-0.5b:haf:1024+mlp=pallas+remat=dots"), args)
    with pytest.raises(SystemExit, match="bad option"):
        Case.parse("qwen2.5-0.5b:haf:1024+mlp=triton")
    # the kernel's tile and launch options, as bench/mlp_kernel_sweep.py --print-best writes them
    cfg = case_model_config(Case.parse("qwen2.5-0.5b:haf:1024+mlp=pallas+mlptile=64x128x32"
                                       "+mlpwarps=4+mlpstages=4"), args)
    assert cfg.mlp_kernel_blocks.tile == "64x128x32" and cfg.mlp_blocks == (64, 128, 32, 4, 4)
    cfg = case_model_config(Case.parse("qwen2.5-0.5b:haf:1024+mlp=pallas+mlpwarps=4"), args)
    assert cfg.mlp_blocks == (128, 128, 64, 4, 3)  # the rest from ModelConfig's defaults
    with pytest.raises(SystemExit, match="power of two"):
        case_model_config(Case.parse("qwen2.5-0.5b:haf:1024+mlp=pallas+mlptile=96x128x64"),
                          args)


# The LM-head kernel as compiled for an H100: a Triton custom call of rows by the tied table.
HEAD_KERNEL_HLO = """HloModule m

ENTRY %main (p0: bf16[2048,896], p1: bf16[151936,896]) -> (f32[1187,2048], f32[1187,2048]) {
  %p0 = bf16[2048,896]{1,0} parameter(0)
  %p1 = bf16[151936,896]{1,0} parameter(1)
  ROOT %pallas_call.4 = (f32[1187,2048]{1,0}, f32[1187,2048]{1,0}) custom-call(%p0, %p1), custom_call_target="__gpu$xla.gpu.triton", metadata={op_name="jit(f)/lm_head_log_normalisers/pallas_call"}
}
"""


def test_roofline_counts_the_head_kernels_logits_matmul():
    from bench.hlo_roofline import program_kernels

    [kernel] = program_kernels(HEAD_KERNEL_HLO)
    assert kernel.category == "matmul" and kernel.flops == 2 * 2048 * 151936 * 896
    assert kernel.bytes == (2048 + 151936) * 896 * 2 + 2 * 1187 * 2048 * 4  # table read once


def test_gpu_compile_builds_the_step_from_shapes_alone():
    """bench/gpu_compile.py's compile path (abstract state and batch, the bench's own step),
    here on the CPU mesh; the CUDA target itself needs the jax-cuda plugin."""
    import argparse

    from bench.gpu_compile import compile_case
    from bench.hlo_roofline import program_kernels
    from bench.train_step import Case
    from hafrm_jax.sharding import make_mesh

    args = argparse.Namespace(pairs=2, steps=3, dtype="float32", remat="none",
                              attention="xla", chunk=16, unroll=0)
    cfg, compiled = compile_case(Case.parse("tiny:haf:64+chunk=8"), args, make_mesh())
    assert (cfg.logprob_chunk, cfg.scan_unroll) == (8, 0)
    assert compiled.memory_analysis().peak_memory_in_bytes > 0
    kernels = program_kernels(compiled.as_text(), unknown_trips=2)
    assert sum(k.flops * k.calls for k in kernels) > 0


def test_timeline_op_ms_names_kernels_by_their_hlo_op():
    from bench.trace_summary import timeline_op_ms

    events = [{"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}}]
    for step in range(2):
        events += [{"ph": "X", "pid": 2, "tid": 7, "ts": step * 10, "dur": 3_000,
                    "name": "nvjet_gemm", "args": {"hlo_op": "gemm_fusion_dot.4"}},
                   {"ph": "X", "pid": 2, "tid": 7, "ts": step * 10 + 5, "dur": 500,
                    "name": "loop_add_fusion_2"},
                   {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 9_000, "name": "python"}]
    assert timeline_op_ms(events, steps=2) == [
        {"gemm_fusion_dot.4": pytest.approx(3.0), "loop_add_fusion_2": pytest.approx(0.5)}]


def test_a_profiled_case_saves_its_program_and_ranks_kernels_against_their_bound(tmp_path):
    from bench.train_step import run_case

    row = run_case(PRESETS["tiny"], "haf", pairs=2, seq=32, steps=1, peak_tflops=1.0,
                   profile_dir=str(tmp_path), profile_steps=1, bandwidth_tb_s=4.8)
    assert "error" not in row["profile"], row["profile"]
    assert row["profile"]["bandwidth_tb_s"] == 4.8
    assert (tmp_path / "program.hlo").read_text().startswith("HloModule")
    against = row["profile"]["against_bound"]
    matched = int(against.split(" of ")[0])
    assert matched > 10 and "| kernel | category | measured ms |" in against


def test_a_profile_holds_kernels_against_the_devices_own_bandwidth():
    """An H200 profiled at an H100's bandwidth would show its memory-bound kernels at 70% of a
    bound they cannot reach: the table follows the device's name, and the flag overrides it."""
    from bench.hlo_roofline import H100_BANDWIDTH_TB_S, device_bandwidth_tb_s
    from bench.train_step import profile_bandwidth_tb_s

    assert device_bandwidth_tb_s("NVIDIA H200") == 4.8
    assert device_bandwidth_tb_s("NVIDIA H100 80GB HBM3") == H100_BANDWIDTH_TB_S == 3.35
    assert device_bandwidth_tb_s("NVIDIA H100 PCIe") == 2.0
    assert device_bandwidth_tb_s("NVIDIA H100 NVL") == 3.9
    assert device_bandwidth_tb_s("cpu") is None
    assert profile_bandwidth_tb_s(None, "NVIDIA H200") == 4.8
    assert profile_bandwidth_tb_s(None, "cpu") == H100_BANDWIDTH_TB_S
    assert profile_bandwidth_tb_s(2.5, "NVIDIA H200") == 2.5


def _needs_libtpu():
    import importlib.util

    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu is not installed (pip install \"jax[tpu]\"; .ci/run installs it "
                    "for the TPU compile tests)")


def test_the_step_compiles_for_tpu_slices_of_one_and_several_hosts():
    """libtpu's compiler, without a TPU: the step sharded over a v5e-4 (one host) and a v5e-16
    (four hosts, the whole job's program compiled here), with the peak per chip."""
    _needs_libtpu()
    import argparse

    from bench.gpu_compile import compile_case, tpu_mesh
    from bench.train_step import Case

    out = gpu_compile("--tpu=v5e:2x2", "--pairs=4", "--dtype=float32",
                      "--cases=tiny:haf:64,tiny:baseline:64+remat=dots+unroll=1")
    assert "# v5e:2x2: 4 x TPU v5 lite" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| tiny:")]
    assert len(rows) == 2 and all(0 <= float(row[1]) < 1 for row in rows), out  # GiB, 2 places

    args = argparse.Namespace(pairs=16, steps=3, dtype="float32", remat="none",
                              attention="xla", chunk=16, unroll=0)
    params_bytes = {}
    for topology, chips in (("v5e:2x2", 4), ("v5e:4x4", 16)):
        mesh = tpu_mesh(topology)
        assert mesh.size == chips
        _, compiled = compile_case(Case.parse("tiny:haf:64"), args, mesh)
        memory = compiled.memory_analysis()
        assert memory.peak_memory_in_bytes > 0
        params_bytes[chips] = memory.argument_size_in_bytes
    # params, optimizer state and batch are split over the chips: 4x as many, ~1/4 a chip
    assert params_bytes[16] < 0.5 * params_bytes[4], params_bytes


def test_a_step_larger_than_a_tpu_chip_is_reported_and_stops_the_memory_check():
    """Qwen2.5-0.5B HaF at the paper's batch (16 pairs x 512) on one v5e chip (16 GB): libtpu
    refuses it at compile time; the bench says so, and the training loop's memory check turns
    the refusal into its advice."""
    _needs_libtpu()
    spec = "qwen2.5-0.5b:haf:512+remat=dots+unroll=1"
    out = gpu_compile("--tpu=v5e:1x1", "--pairs=16", f"--cases={spec}")
    assert f"| {spec} | does not fit:" in out and "HBM" in out

    import argparse

    from bench.gpu_compile import lower_case, tpu_mesh
    from bench.train_step import Case
    from configs.hh import get_config
    from hafrm_jax.train.memory import StepDoesNotFitError, check_step_fits

    args = argparse.Namespace(pairs=16, steps=3, dtype="bfloat16", remat="none",
                              attention="xla", chunk=128, unroll=0)
    _, lowered = lower_case(Case.parse(spec), args, tpu_mesh("v5e:1x1"))
    with pytest.raises(StepDoesNotFitError, match="HBM") as raised:
        check_step_fits(lowered, None, get_config(), 1, (16, 2, 512))
    assert "--config.model.remat=full" in str(raised.value)


def test_sharded_step_counts_the_bytes_of_each_collective():
    from bench.sharded_step import collective_bytes

    hlo = """
  %all-gather.1 = f32[16,256,4]{2,1,0} all-gather(f32[2,256,4]{2,1,0} %x), dimensions={0}
  %all-reduce.2 = (bf16[8,4]{1,0}, s32[]) all-reduce(bf16[8,4]{1,0} %a, s32[] %b), to_apply=%add
  %reduce-scatter.3 = f32[2,64]{1,0} reduce-scatter(f32[16,64]{1,0} %g), dimensions={0}
  %add.4 = f32[16,256,4]{2,1,0} add(f32[16,256,4]{2,1,0} %p, f32[16,256,4]{2,1,0} %q)
"""
    assert collective_bytes(hlo) == 4 * 16 * 256 * 4 + (2 * 8 * 4 + 4) + 4 * 2 * 64


def test_lm_head_variants_compute_the_same_log_probs_and_gradients():
    """The head benchmarks' variants (stored logits, the library's chunks with their logits kept,
    the library's kernels) against the library's chunked log-prob sum: same value and gradients
    (float32, CPU)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bench.lm_head_variants import VARIANTS

    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    sequences, seq, hidden_size, vocab = 4, 16, 16, 32  # the kernels take multiples of 16
    hidden = jax.random.normal(keys[0], (sequences, seq, hidden_size))
    weight = jax.random.normal(keys[1], (vocab, hidden_size)) * 0.3
    ids = jax.random.randint(keys[2], (sequences, seq), 0, vocab)
    response = jnp.zeros((sequences, seq), jnp.int32).at[:, seq // 2:].set(1)
    results = [jax.value_and_grad(lambda h, w, f=f: f(h, w, ids, response, 4),
                                  argnums=(0, 1))(hidden, weight)
               for f in (VARIANTS["chunked"], VARIANTS["stored"], VARIANTS["chunked_stored"],
                         VARIANTS["kernels"])]
    (value_a, (dh_a, dw_a)), *others = results
    for value_b, (dh_b, dw_b) in others:
        np.testing.assert_allclose(value_a, value_b, rtol=1e-5)
        np.testing.assert_allclose(dh_a, dh_b, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(dw_a, dw_b, rtol=1e-4, atol=1e-5)


def test_lm_head_sweep_times_each_configuration_once_and_checks_it(tmp_path, capsys):
    """bench/lm_head_sweep.py --smoke (CPU: the kernels through Pallas' interpreter): a row per
    distinct configuration, every one agreeing with XLA's chunks, JSON lines and a table."""
    from bench.lm_head_sweep import main

    out = tmp_path / "head.jsonl"
    rows = main(["--smoke", "--variants=chunked,kernels,stored", f"--json={out}"])
    # the smoke's tiles 16x16x16 and 32x32x16 with warps auto (4 for these tiles) and 4: two
    assert [(r["variant"], r["tile"], r["warps"]) for r in rows] == [
        ("chunked", "", ""), ("kernels", "16x16x16", 4), ("kernels", "32x32x16", 4),
        ("stored", "", "")]
    assert rows[0]["rel_err"] is None
    assert all(r["rel_err"] < 5e-3 and r["ms"] > 0 and r["tflops"] > 0 for r in rows[1:])
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert "| kernels | 32x32x16 | 4 | 3 |" in capsys.readouterr().out
    fastest = min(rows[1:3], key=lambda r: r["ms"])
    assert main([f"--print-best={out}"]) == []
    assert capsys.readouterr().out == (f"+head=pallas+tile={fastest['tile']}+warps=4+stages=3\n")


def test_mlp_kernel_sweep_times_xla_the_matmul_and_each_tile(tmp_path, capsys):
    """bench/mlp_kernel_sweep.py --smoke (CPU: the kernel through Pallas' interpreter): XLA's
    path, its matmul alone, then a row per tile, each kernel row agreeing with XLA's to bf16
    rounding (the kernel rounds once, XLA's path twice)."""
    from bench.mlp_kernel_sweep import best_kernel_options, main, sweep_configs

    out = tmp_path / "mlp.jsonl"
    rows = main(["--smoke", f"--json={out}"])
    assert [(r["variant"], r["tile"]) for r in rows] == [
        ("xla", ""), ("matmul", ""), ("kernel", "16x16x16"), ("kernel", "32x16x16")]
    assert rows[0]["rel_err"] is None and rows[1]["rel_err"] is None  # d_h: another quantity
    assert all(r["rel_err"] < 2e-2 and r["ms"] > 0 and r["tflops"] > 0 for r in rows[2:])
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert "| kernel | 32x16x16 | 4 | 3 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="rows x mlp x depth"):
        sweep_configs(["128x128"], [8], [3])
    # the fastest kernel row that agreed, as the whole step's case options
    fastest = min(rows[2:], key=lambda r: r["ms"])
    assert main([f"--print-best={out}"]) == []
    assert capsys.readouterr().out == (f"+mlp=pallas+mlptile={fastest['tile']}+mlpwarps=4"
                                       "+mlpstages=3\n")
    assert best_kernel_options(rows[:2]) == ""  # no kernel row ran
    disagreeing = [{**r, "rel_err": 0.5} if r is fastest else r for r in rows]
    slower = next(r for r in rows[2:] if r is not fastest)
    assert best_kernel_options(disagreeing) == (f"+mlp=pallas+mlptile={slower['tile']}"
                                                "+mlpwarps=4+mlpstages=3")


def test_lm_head_sweep_reports_a_failed_configuration_and_goes_on(monkeypatch, capsys):
    import bench.lm_head_sweep as sweep

    def refused(*args, kernel_blocks=None, **kwargs):
        if kernel_blocks.tile == "16x16x16":
            raise RuntimeError("Triton: out of shared memory\nmore detail")
        return sweep.VARIANTS["chunked"](*args, **kwargs)

    monkeypatch.setitem(sweep.VARIANTS, "kernels", refused)
    rows = sweep.main(["--smoke", "--warps=auto"])
    assert rows[1]["error"] == "RuntimeError: Triton: out of shared memory"
    assert rows[2]["tile"] == "32x32x16" and rows[2]["rel_err"] == 0
    assert "| kernels | 16x16x16 | 4 | 3 | error: RuntimeError" in capsys.readouterr().out
    assert sweep.best_kernel_options(rows) == "+head=pallas+tile=32x32x16+warps=4+stages=3"
    assert sweep.best_kernel_options(rows[:2]) == ""  # no kernels row ran
    with pytest.raises(ValueError, match="unknown variant"):
        sweep.sweep_configs(["fused"], ["128x128x64"], ["auto"], [3])
    with pytest.raises(ValueError, match="rows x vocab x depth"):
        sweep.sweep_configs(["kernels"], ["128x128"], ["auto"], [3])


def test_tokenize_speed_times_each_chunk_size_on_the_same_tokens():
    """bench/tokenize_speed.py --smoke: a row per ENCODE_CHUNK, the same tokens whatever the
    chunk, and the library's chunk size restored after."""
    from bench.tokenize_speed import main
    from hafrm_jax.data import tokenize

    default = tokenize.ENCODE_CHUNK
    rows = main(["--smoke", "--chunks=1,7,1024"])
    assert [row["chunk"] for row in rows] == [1, 7, 1024]
    assert len({row["tokens"] for row in rows}) == 1 and rows[0]["tokens"] > 0
    assert all(row["pairs"] == 200 and row["pairs_per_s"] > 0 for row in rows)
    assert tokenize.ENCODE_CHUNK == default


def test_tokenize_speed_cache_mode_times_the_three_ways_on_the_same_tokens():
    """bench/tokenize_speed.py --smoke --cache: tokenised, tokenised and written, read back;
    the same tokens each way, and a file of the real tokens only."""
    from bench.tokenize_speed import main

    rows = main(["--smoke", "--cache"])
    assert [row["way"] for row in rows] == ["tokenise, no cache", "tokenise and write",
                                            "read back"]
    assert len({row["tokens"] for row in rows}) == 1 and rows[0]["tokens"] > 0
    assert all(row["pairs"] == 200 and row["seconds"] > 0 for row in rows)
    assert 0 < rows[0]["file_mb"] < rows[0]["dense_mb"]


def test_scoring_order_bench_scores_the_same_pairs_either_way():
    """bench/scoring_order.py --smoke: split order and by length give the same scores, in
    split order; by length computes no more positions."""
    from bench.scoring_order import main

    split_order, by_length = main(["--smoke"])
    assert [split_order["order"], by_length["order"]] == ["split order", "by length"]
    assert by_length["positions"] <= split_order["positions"]
    assert by_length["max_abs_diff_rewards"] < 1e-5 and by_length["max_abs_diff_logps"] < 1e-4
    assert split_order["seconds"] > 0 and by_length["seconds"] > 0


def test_cpu_allocator_bench_runs_the_same_training_in_both_settings():
    """bench/cpu_allocator.py --smoke: a row per setting, from the child's own rusage; the
    allocator changes no number the training computes."""
    from bench.cpu_allocator import SETTINGS, main

    rows = main(["--smoke"])
    assert [row["setting"] for row in rows] == list(SETTINGS)
    assert [row["kept"] for row in rows] == [False, True]
    assert rows[0]["accuracy"] == rows[1]["accuracy"]
    assert all(row["wall_s"] > 0 and row["minor_faults"] > 0 and row["peak_rss_mb"] > 0
               for row in rows)


def test_compile_cache_bench_resumes_with_and_without_the_cache():
    """bench/compile_cache.py --smoke: the resume with the cache reads programs, the one
    without compiles them all, and both end with the same test accuracy."""
    from bench.compile_cache import main

    first, cached, uncached = main(["--smoke"])
    assert first["step"] == 2 and first["accuracy"] is None
    assert first["compiling"]["programs"] > 0 and first["compiling"]["read_from_cache"] == 0
    assert cached["process"] == "resumed, cache" and uncached["process"] == "resumed, no cache"
    assert cached["step"] == uncached["step"] == 4
    assert cached["compiling"]["read_from_cache"] >= 2
    assert uncached["compiling"]["read_from_cache"] == 0
    assert uncached["compiling"]["cache"] is None
    assert cached["accuracy"] == uncached["accuracy"]
