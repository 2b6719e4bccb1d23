"""What XLA's GPU compiler makes of the step's speed levers, compiled for an H100 by the CUDA
plugin on this CPU machine (bench/gpu_compile.py; no GPU, nothing runs).

The levers of bench/RESULTS.md rounds 13-14 exist only as fusion decisions of XLA's GPU
compiler: a later XLA, or a change to the code around them, could undo one with every CPU test
still green. These tests pin them: the LM head's backward softmax stays the epilogue of its
recompute matmul, the MLP kernel writes the gate/up gradients from its own matmul, and the 0.5B
HaF step keeps the predicted peak and roofline bound recorded in RESULTS. They skip without the
plugin; `.ci/run` installs it under the GPU machines' jax and runs them (`-m cuda_compile`).
"""

import importlib.util

import pytest

from tests.helpers import gpu_compile

pytestmark = pytest.mark.cuda_compile


def _h100_mesh():
    """A one-device mesh of an H100 described to the CUDA plugin, or a skip saying why."""
    plugins = importlib.util.find_spec("jax_plugins") is not None and any(
        importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (12, 13))
    if not plugins:
        pytest.skip("the CUDA plugin is not installed (pip install \"jax-cuda13-plugin==<jax "
                    "version>\" nvidia-cudnn-cu13; .ci/run installs it for these tests)")
    from bench.gpu_compile import H100_TARGET, gpu_mesh

    return gpu_mesh(H100_TARGET)


def _compiled_kernels(fn, *shapes):
    """bench/hlo_roofline's kernels of `fn` compiled for an H100 on (dtype, shape) arguments."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    from bench.hlo_roofline import program_kernels

    mesh = _h100_mesh()
    replicated = NamedSharding(mesh, PartitionSpec())
    args = [None if s is None else jax.ShapeDtypeStruct(s[1], s[0], sharding=replicated)
            for s in shapes]
    with jax.set_mesh(mesh):  # Pallas kernels lower through Triton for the mesh's GPU
        return program_kernels(jax.jit(fn).lower(*args).compile().as_text())


def _result(kernel) -> tuple[str, tuple[int, ...]] | None:
    """(dtype, dims) of a kernel's array result; None for a tuple of results."""
    from bench.hlo_roofline import array_shapes

    arrays = array_shapes(kernel.shape)
    return arrays[0] if len(arrays) == 1 else None


# Qwen2.5-0.5B's head on the bench's batch: 16 sequences x 1,024, the second half scored.
SEQUENCES, SEQ, HIDDEN, VOCAB, CHUNK = 16, 1024, 896, 151_936, 128
ROWS = SEQUENCES * CHUNK  # positions a chunk of the loop computes


@pytest.mark.parametrize("layout", ["tied", "untied with a bias"])
def test_the_heads_backward_softmax_is_the_epilogue_of_its_recompute_matmul(layout):
    """The backward's recompute matmul writes bf16 d_logits directly: one float32 [rows, vocab]
    product a chunk (the forward's, read by its max/sum-exp reduction), and no elementwise pass
    over [rows, vocab] (RESULTS round 14: 1.5 ms of the step's bound when it was one)."""
    import jax
    import jax.numpy as jnp

    from hafrm_jax.model.readout import sequence_logprobs

    tied = layout == "tied"

    def loss(hidden, weight, bias, input_ids, response_mask):
        return jnp.sum(sequence_logprobs(hidden, weight, input_ids, response_mask, CHUNK,
                                         lm_bias=bias, vocab_major=tied))

    grad = jax.value_and_grad(loss, argnums=(0, 1) if tied else (0, 1, 2))
    kernels = _compiled_kernels(
        grad, (jnp.bfloat16, (SEQUENCES, SEQ, HIDDEN)),
        (jnp.float32, (VOCAB, HIDDEN) if tied else (HIDDEN, VOCAB)),
        None if tied else (jnp.float32, (VOCAB,)),
        (jnp.int32, (SEQUENCES, SEQ)), (jnp.int32, (SEQUENCES, SEQ)))
    logits_sized = [(k.category, *_result(k)) for k in kernels
                    if _result(k) and _result(k)[1] == (ROWS, VOCAB)]
    assert sorted(logits_sized) == [
        ("matmul", "bf16", (ROWS, VOCAB)),  # the backward's recompute, softmax as its epilogue
        ("matmul", "f32", (ROWS, VOCAB)),  # the forward's logits
        ("reduction", "bf16", (ROWS, VOCAB)),  # the targets' entries, set in place
    ], logits_sized


def test_the_head_kernels_never_write_float32_logits():
    """With lm_head_kernel=pallas the logits are reduced where Triton computes them: no kernel
    writes a float32 [rows, vocab] array."""
    import jax.numpy as jnp

    from bench.lm_head_variants import value_and_grad

    kernels = _compiled_kernels(
        value_and_grad("kernels", CHUNK), (jnp.bfloat16, (SEQUENCES, SEQ, HIDDEN)),
        (jnp.float32, (VOCAB, HIDDEN)), (jnp.int32, (SEQUENCES, SEQ)),
        (jnp.int32, (SEQUENCES, SEQ)))
    assert any(k.kind.startswith("__gpu$xla.gpu.triton") for k in kernels)
    assert not [k.shape for k in kernels if _result(k) == ("f32", (ROWS, VOCAB))]


def test_the_mlp_kernel_writes_the_gate_up_gradients_from_its_matmul():
    """mlp_kernel=pallas at Qwen2.5-0.5B's widths: the Triton kernel's result is the stacked
    [rows, 2 * mlp] gate/up gradient, and no elementwise pass reads d_h back (XLA's own
    backward writes d_h from its matmul, then a separate [rows, 2, mlp] pass)."""
    import jax
    import jax.numpy as jnp

    from hafrm_jax.model.mlp_kernel import MlpBlocks, gated_silu_down, silu_gated

    rows, mlp = 2048, 4864

    def backward_kernels(use_kernel: bool):
        def loss(gate_up, w_down):
            out = (gated_silu_down(gate_up, w_down, MlpBlocks()) if use_kernel
                   else silu_gated(gate_up) @ w_down)
            return jnp.sum(out.astype(jnp.float32))

        return _compiled_kernels(jax.grad(loss, argnums=(0, 1)),
                                 (jnp.bfloat16, (rows, 2, mlp)), (jnp.bfloat16, (mlp, HIDDEN)))

    stacked = ("bf16", (rows, 2, mlp))
    xla = backward_kernels(False)
    assert [k.category for k in xla if _result(k) == stacked] == ["elementwise"]
    kernel = backward_kernels(True)
    triton = [k for k in kernel if k.kind.startswith("__gpu$xla.gpu.triton")]
    assert [_result(k) for k in triton] == [("bf16", (rows, 2 * mlp))], triton
    assert not [k for k in kernel if _result(k) == stacked]


# bench/RESULTS.md round 14 (jax 0.11.2, 4.8 TB/s and 620.8 TFLOP/s): predicted peak GiB and
# roofline bound ms of the 0.5B HaF step at 8 pairs x 1,024, XLA's MLP and the MLP kernel.
RECORDED_WITH = "0.11.2"  # the GPU machines' jax, whose compiler the figures are from
RECORDED = {"qwen2.5-0.5b:haf:1024": (23.01, 91.4),
            "qwen2.5-0.5b:haf:1024+mlp=pallas": (23.01, 87.5)}


@pytest.mark.slow
def test_the_05b_haf_step_keeps_its_recorded_peak_and_bound():
    """The whole step compiled for an H100: a change to the model, the objective or the
    optimizer that costs memory traffic or a fusion shows as a bound above RESULTS' figure
    (1% slack: 0.9 ms, a third of the 2.7 ms the 1.3x goal still lacks), a buffer as a higher
    peak (0.2 GiB slack; torch.compile's measured peak is 37.8)."""
    _h100_mesh()
    import jax

    if jax.__version__ != RECORDED_WITH:
        pytest.skip(f"the recorded figures are jax {RECORDED_WITH}'s compiler's (this is "
                    f"{jax.__version__}): .ci/run checks them in its jax {RECORDED_WITH} venv")
    out = gpu_compile("--top=0", "--bandwidth-tb-s=4.8", "--peak-tflops=620.8",
                      "--cases=" + ",".join(RECORDED))
    for case, (peak_gib, bound_ms) in RECORDED.items():
        row = next((line.split(" | ") for line in out.splitlines()
                    if line.startswith(f"| {case} |")), None)
        assert row is not None, out[-3000:]
        assert float(row[1]) <= peak_gib + 0.2, (case, row)
        assert float(row[2]) <= bound_ms * 1.01, (case, row)
