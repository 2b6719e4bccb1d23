"""Decoder execution options: the remat policy that keeps the fused attention kernel's outputs,
and unrolling the scan over layers; neither may change the function computed."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import Primitive
from jax.interpreters import mlir

from hafrm_jax.model.config import PRESETS, LoraConfig
from hafrm_jax.model.decoder import (_FUSED_ATTENTION_FORWARD, gate_up_projections,
                                     save_dots_and_fused_attention)
from hafrm_jax.model.hybrid import HybridRewardModel
from hafrm_jax.objective import LossConfig, ObjectiveConfig, hybrid_loss
from tests.conftest import make_pair_batch
from tests.model.test_hybrid import init


def _stand_in_attention():
    """A custom-VJP op built like jax's cuDNN attention (which needs a GPU): its forward rule
    binds a primitive of the same name with two outputs (output and softmax statistics), and its
    backward rule reads the statistics."""
    prim = Primitive(_FUSED_ATTENTION_FORWARD[0])
    prim.multiple_results = True
    impl = lambda x: [jnp.sin(x), jnp.cos(x)]  # noqa: E731
    prim.def_impl(impl)
    prim.def_abstract_eval(lambda x: [x, x])
    mlir.register_lowering(prim, mlir.lower_fun(impl, multiple_results=True))

    @jax.custom_vjp
    def attention(x):
        return prim.bind(x)[0]

    def forward(x):
        out, stats = prim.bind(x)
        return out, stats

    attention.defvjp(forward, lambda stats, g: (g * stats,))
    return attention


def test_dots_attention_policy_saves_the_fused_kernel_outputs():
    attention = _stand_in_attention()
    w = jax.random.normal(jax.random.PRNGKey(0), (8, 8)) / 4
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8))
    layer = lambda x: attention(x @ w) @ w  # noqa: E731
    forward_calls, grads = {}, {}
    for name, policy in (("dots", jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
                         ("dots_attention", save_dots_and_fused_attention)):
        grad = jax.grad(lambda x: jnp.sum(jax.checkpoint(layer, policy=policy)(x)))
        forward_calls[name] = str(jax.make_jaxpr(grad)(x)).count(_FUSED_ATTENTION_FORWARD[0])
        grads[name] = grad(x)
    # "dots" runs the attention forward again in the backward pass; the new policy does not
    assert forward_calls == {"dots": 2, "dots_attention": 1}
    np.testing.assert_allclose(grads["dots_attention"], grads["dots"], rtol=1e-6)
    np.testing.assert_allclose(grads["dots"], jax.grad(lambda x: jnp.sum(layer(x)))(x), rtol=1e-6)


@functools.lru_cache(maxsize=None)
def _params_and_batch(cfg):
    """Params of cfg and a pair batch, made once (init alone takes seconds)."""
    _, params = init(cfg)
    batch = make_pair_batch(np.random.default_rng(0), 2, 8, cfg.vocab_size)
    batch["ref_logps"] = np.zeros((2, 2), np.float32)
    return params, batch


@functools.lru_cache(maxsize=None)
def _loss_and_grad(cfg, base):
    """HaF's loss and gradients under cfg, on `_params_and_batch(base)` (cached: every option
    below compares with the same reference)."""
    params, batch = _params_and_batch(base)
    loss_config = LossConfig(cfg, ObjectiveConfig("haf"))
    return jax.jit(jax.value_and_grad(lambda p: hybrid_loss(p, batch, loss_config)[0]))(params)


@pytest.mark.parametrize("options", [dict(scan_unroll=0), dict(scan_unroll=2, remat="dots"),
                                     dict(remat="dots_attention"), dict(mlp_kernel="pallas")])
def test_execution_options_compute_the_same_loss_and_gradients(tiny_config, options):
    ref_loss, ref_grad = _loss_and_grad(tiny_config, tiny_config)
    loss, grad = _loss_and_grad(dataclasses.replace(tiny_config, **options), tiny_config)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    # float32 rounding apart: without remat the gate and up projections are one matmul
    # (gate_up_projections), whose sums run in another order than two matmuls'; the MLP kernel
    # (run by Pallas' interpreter here) sums d_h in its own order too
    for a, b in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(ref_grad)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_initial_params_do_not_depend_on_scan_unrolling(tiny_config):
    """init_params builds every model scanned one layer a step (an unrolled init compiles each
    layer's initialiser apart: 16.5 s instead of 2.3 s at Qwen2.5-0.5B), which is right only
    while nn.scan draws the same params however it unrolls."""
    ids = jnp.zeros((2, 8), jnp.int32)
    mask = jnp.ones((2, 8), jnp.int32)
    drawn = {}
    for unroll in (1, 0):  # the LoRA adapters too
        cfg = dataclasses.replace(tiny_config, num_layers=3, scan_unroll=unroll,
                                  lora=LoraConfig(rank=2))
        model = HybridRewardModel(cfg)
        drawn[unroll] = jax.jit(lambda rng: model.init(rng, ids, mask, mask))(
            jax.random.PRNGKey(3))
    assert set(drawn[1]) == {"params", "lora"}
    assert jax.tree_util.tree_structure(drawn[0]) == jax.tree_util.tree_structure(drawn[1])
    for a, b in zip(jax.tree_util.tree_leaves(drawn[0]), jax.tree_util.tree_leaves(drawn[1])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("with_bias", [False, True])
def test_gate_and_up_as_one_matmul_equal_two(with_bias):
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    x = jax.random.normal(keys[0], (2, 3, 8))
    kernels = [jax.random.normal(k, (8, 16)) / 3 for k in keys[1:3]]
    biases = [jax.random.normal(k, (16,)) if with_bias else None for k in keys[3:5]]

    def swiglu(one_matmul):
        def f(x, gate_kernel, up_kernel, gate_bias, up_bias):
            gate, up = gate_up_projections(x, gate_kernel, up_kernel, gate_bias, up_bias,
                                           one_matmul)
            return jnp.sum(jax.nn.silu(gate) * up * jnp.arange(16))
        return f

    args = (x, *kernels, *biases)
    argnums = (0, 1, 2, 3, 4) if with_bias else (0, 1, 2)
    one, two = (jax.value_and_grad(swiglu(flag), argnums)(*args) for flag in (True, False))
    np.testing.assert_allclose(one[0], two[0], rtol=1e-5)
    for a, b in zip(one[1], two[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(swiglu(True))(*args))
    assert jaxpr.count("dot_general") == 1


def test_decoder_runs_gate_and_up_as_one_matmul_without_remat(tiny_config):
    """One product for both projections when nothing is rematerialised (faster there); two
    under remat, where XLA fuses the recomputed activation with the cotangents."""
    _, params = init(tiny_config)
    batch = make_pair_batch(np.random.default_rng(0), 2, 8, tiny_config.vocab_size)
    batch["ref_logps"] = np.zeros((2, 2), np.float32)

    def forward_dots(remat):
        cfg = dataclasses.replace(tiny_config, remat=remat)
        loss = lambda p: hybrid_loss(p, batch, LossConfig(cfg, ObjectiveConfig("baseline")))[0]
        return str(jax.make_jaxpr(loss)(params)).count("dot_general")

    # per layer: q, k, v, o, (gate, up) or gate and up, down; scores and values in attention
    assert forward_dots("dots") - forward_dots("none") == 1


def _bf16_sums(jaxpr) -> list[str]:
    """reduce_sum equations over a bf16 operand in `jaxpr` and the jaxprs it calls."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "reduce_sum" and eqn.invars[0].aval.dtype == jnp.bfloat16:
            found.append(f"{eqn.source_info.name_stack}: {eqn.invars[0].aval}")
        for value in eqn.params.values():
            for inner in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    found += _bf16_sums(inner)
    return found


@pytest.mark.parametrize("remat", ["none", "dots"])
def test_no_gradient_of_a_bf16_step_is_summed_in_bf16(tiny_config, remat):
    """Every bias of a Phi-2-like model (q/k/v, attention output, MLP; Qwen2 has the q/k/v
    ones): autodiff of a bf16 bias add sums the cotangent over batch and sequence in bf16."""
    cfg = dataclasses.replace(
        tiny_config, dtype="bfloat16", remat=remat, family="phi", norm="layer",
        block="parallel", mlp="plain", activation="gelu_tanh", qkv_bias=True, mlp_bias=True,
        attention_out_bias=True, lm_head_bias=True, partial_rotary_factor=0.5)
    _, params = init(cfg)
    batch = make_pair_batch(np.random.default_rng(0), 2, 8, cfg.vocab_size)
    batch["ref_logps"] = np.zeros((2, 2), np.float32)
    loss = lambda p: hybrid_loss(p, batch, LossConfig(cfg, ObjectiveConfig("haf")))[0]
    assert _bf16_sums(jax.make_jaxpr(jax.grad(loss))(params).jaxpr) == []


def test_embedding_gradient_sums_a_repeated_token_in_float32(tiny_config):
    """In bf16 compute, a token's embedding gradient is the float32 sum of its positions' rows
    (PyTorch autocast's too): summed in bf16, a token seen ~500 times came out up to 74% off.
    The exact sum comes from the same model with one table row per position (vocab = positions),
    whose gradient rows are the per-position cotangents themselves."""
    cfg = dataclasses.replace(tiny_config, dtype="bfloat16")
    _, params = init(cfg)
    rng = np.random.default_rng(0)
    pairs, seq = 2, 256
    ids = np.where(rng.random((pairs, 2, seq)) < 0.5, 7,
                   rng.integers(3, cfg.vocab_size, (pairs, 2, seq))).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "response_mask": np.ones_like(ids)}
    loss = lambda c: jax.jit(jax.grad(
        lambda p, b: hybrid_loss(p, b, LossConfig(c, ObjectiveConfig("baseline")))[0]))

    grad = loss(cfg)(params, batch)["backbone"]["embed_tokens"]["embedding"]

    positions = ids.size
    per_position = jax.tree_util.tree_map(lambda x: x, params)
    table = np.asarray(params["backbone"]["embed_tokens"]["embedding"])
    per_position["backbone"]["embed_tokens"]["embedding"] = jnp.asarray(table[ids.reshape(-1)])
    per_position["lm_head"]["kernel"] = jnp.zeros((cfg.hidden_size, positions))  # unused
    rows = loss(dataclasses.replace(cfg, vocab_size=positions))(
        per_position, {**batch, "input_ids": np.arange(positions, dtype=np.int32).reshape(ids.shape)}
    )["backbone"]["embed_tokens"]["embedding"]
    exact = np.zeros(table.shape)
    np.add.at(exact, ids.reshape(-1), np.asarray(rows, np.float64))

    assert np.sum(ids == 7) > 400
    np.testing.assert_allclose(np.asarray(grad[7]), exact[7], rtol=1e-4,
                               atol=1e-5 * np.abs(exact[7]).max())
    np.testing.assert_allclose(np.asarray(grad), exact, rtol=1e-4, atol=1e-5 * np.abs(exact).max())


def test_scan_unroll_is_checked():
    with pytest.raises(ValueError, match="scan_unroll"):
        dataclasses.replace(PRESETS["tiny"], scan_unroll=PRESETS["tiny"].num_layers + 1)
    with pytest.raises(ValueError, match="scan_unroll"):
        dataclasses.replace(PRESETS["tiny"], scan_unroll=-1)
    assert dataclasses.replace(PRESETS["tiny"], scan_unroll=0).layers_per_scan_step == \
        PRESETS["tiny"].num_layers
    with pytest.raises(ValueError, match="remat"):
        dataclasses.replace(PRESETS["tiny"], remat="everything")


def test_remat_survives_full_unrolling(tiny_config):
    """Fully unrolled, the backward pass's recomputation and the forward pass are one program,
    where XLA's CSE would merge them and silently undo the remat (as seen on an H100: the same
    peak memory as remat="none"); the recomputed matmuls must still be in the compiled step."""
    _, params = init(tiny_config)
    batch = make_pair_batch(np.random.default_rng(0), 2, 8, tiny_config.vocab_size)
    batch["ref_logps"] = np.zeros((2, 2), np.float32)

    def compiled_dots(**options):
        cfg = dataclasses.replace(tiny_config, scan_unroll=0, **options)
        grad = jax.jit(jax.grad(
            lambda p: hybrid_loss(p, batch, LossConfig(cfg, ObjectiveConfig("haf")))[0]))
        return grad.lower(params).compile().as_text().count(" dot(")

    assert compiled_dots(remat="dots") > compiled_dots(remat="none")
