"""The benchmark's FLOP formula and its CPU smoke mode (the only part CI runs)."""

import pathlib
import subprocess
import sys

import pytest

from bench.train_step import step_flops
from hafrm_jax.model.config import PRESETS


def test_flops_formula_matches_the_pytorch_anchor():
    # ../shared/bench: Qwen2.5-0.5B HaF, 8 pairs x 1,024 tokens, 351.1 TFLOP/s at 0.1445 s/step
    assert step_flops(PRESETS["qwen2.5-0.5b"], 8, 1024, True) == pytest.approx(
        351.1e12 * 0.1445, rel=2e-3)
    # the plain reward model has no LM-head term
    assert step_flops(PRESETS["qwen2.5-0.5b"], 8, 1024, False) < step_flops(
        PRESETS["qwen2.5-0.5b"], 8, 1024, True)


@pytest.mark.slow
def test_smoke_mode_prints_the_table():
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "bench/train_step.py", "--smoke"], cwd=root,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| tiny | hafrm-jax | haf | 64 |" in out.stdout
    assert "| tiny | hafrm-jax | baseline | 64 |" in out.stdout
    assert "tiny seq 64 (hafrm-jax): HaF / plain-RM step time" in out.stdout


def test_case_specs_round_trip_and_bad_ones_are_refused():
    from bench.train_step import Case

    ours = Case.parse("qwen2.5-0.5b:haf:1024")
    theirs = Case.parse("qwen2.5-1.5b:baseline:512:compile")
    assert (ours.stack, ours.seq, ours.compile) == ("hafrm-jax", 1024, False)
    assert (theirs.stack, theirs.method, theirs.compile) == ("torch", "baseline", True)
    assert [Case.parse(c.spec()) for c in (ours, theirs)] == [ours, theirs]
    assert theirs.label() == "torch compile"
    for bad in ("qwen2.5-0.5b:dpo:1024", "qwen2.5-0.5b:haf", "qwen2.5-0.5b:haf:1024:jit",
                "qwen2.5-0.5b:haf:1024:eager+chunk=256"):
        with pytest.raises(SystemExit, match="bad case"):
            Case.parse(bad)
    variant = Case.parse("qwen2.5-0.5b:haf:1024+chunk=512+remat=none")
    assert variant.options == (("chunk", "512"), ("remat", "none"))
    assert Case.parse(variant.spec()) == variant
    assert variant.label() == "hafrm-jax chunk=512 remat=none"
    for bad in ("qwen2.5-0.5b:haf:1024+chunk=big", "qwen2.5-0.5b:haf:1024+remat=all",
                "qwen2.5-0.5b:haf:1024+lr=1"):
        with pytest.raises(SystemExit, match="bad option"):
            Case.parse(bad)
