"""The gated MLP's backward kernel (model/mlp_kernel.py), run by Pallas' interpreter on CPU: the
same kernel body that Triton compiles on a GPU."""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hafrm_jax.model.config import PRESETS, LoraConfig
from hafrm_jax.model.hybrid import HybridRewardModel
from hafrm_jax.model.mlp_kernel import (MlpBlocks, gate_up_gradients, gated_silu_down,
                                        silu_gated)
from hafrm_jax.sharding import DEFAULT_RULES, MESH_AXES


def _operands(rows: int, hidden: int, width: int, dtype=jnp.float32, seed: int = 0):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    d_out = jax.random.normal(k[0], (rows, hidden), jnp.float32).astype(dtype)
    w_down = (jax.random.normal(k[1], (width, hidden), jnp.float32) / 4).astype(dtype)
    gate_up = (2 * jax.random.normal(k[2], (rows, 2, width), jnp.float32)).astype(dtype)
    return d_out, w_down, gate_up


def _xla_gate_up_gradients(d_out, w_down, gate_up):
    """What autodiff of silu(gate) * up @ w_down gives gate_up, in float32."""
    _, vjp = jax.vjp(lambda gu: silu_gated(gu) @ w_down.astype(jnp.float32),
                     gate_up.astype(jnp.float32))
    return vjp(d_out.astype(jnp.float32))[0]


@pytest.mark.parametrize("rows, width, blocks", [
    (64, 64, MlpBlocks(rows=32, mlp=32, depth=16)),  # a 2 x 2 grid, two depth steps
    # no block of >= 16 divides 40 rows (padded to 128); the mlp block shrinks to 16
    (40, 48, MlpBlocks()),
])
def test_gradients_equal_autodiff_of_the_activation(rows, width, blocks):
    d_out, w_down, gate_up = _operands(rows, 32, width)
    got = gate_up_gradients(d_out, w_down, gate_up, blocks)
    assert got.shape == gate_up.shape and got.dtype == gate_up.dtype
    np.testing.assert_allclose(got, _xla_gate_up_gradients(d_out, w_down, gate_up),
                               rtol=1e-5, atol=1e-5)


def test_bf16_gradients_stay_within_rounding_of_float32():
    operands = _operands(32, 32, 32, jnp.bfloat16, seed=1)
    exact = _xla_gate_up_gradients(*operands)
    got = gate_up_gradients(*operands, MlpBlocks(rows=16, mlp=16, depth=16)).astype(jnp.float32)
    assert float(jnp.max(jnp.abs(got - exact)) / jnp.max(jnp.abs(exact))) < 1e-2


def test_custom_vjp_has_the_value_and_gradients_of_plain_autodiff():
    _, w_down, gate_up = _operands(2 * 16, 32, 48, seed=2)
    gate_up = gate_up.reshape(2, 16, 2, 48)  # [batch, seq, 2, mlp]
    cotangent = jax.random.normal(jax.random.PRNGKey(3), (2, 16, 32))

    value, vjp = jax.vjp(gated_silu_down, gate_up, w_down)
    want_value, want_vjp = jax.vjp(lambda gu, w: silu_gated(gu) @ w, gate_up, w_down)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    for got, want in zip(vjp(cotangent), want_vjp(cotangent)):  # d gate_up, d w_down
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_model_runs_the_kernel_only_when_asked_with_its_tile(tiny_config):
    ids = jnp.ones((2, 16), jnp.int32)
    mask = jnp.ones((2, 16), jnp.int32)

    def traced(cfg) -> str:  # the backward pass's program, as text
        model = HybridRewardModel(cfg)
        params = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids, mask, mask)
        grad = jax.grad(lambda p: jnp.sum(model.apply(p, ids, mask, with_logprobs=False)[0]))
        return str(jax.make_jaxpr(grad)(params))

    def launches(program: str) -> set[str]:
        return set(re.findall(r"grid=\([^)]*\)|num_warps=\d+|num_stages=\d+", program))

    assert traced(tiny_config).count("mlp_gate_up_gradients") == 0
    default = traced(dataclasses.replace(tiny_config, mlp_kernel="pallas"))
    assert default.count("mlp_gate_up_gradients") > 0
    # 32 rows, an MLP 64 wide: the default 128 x 128 blocks shrink to one 32 x 64 program
    assert launches(default) == {"grid=(1, 1)", "num_warps=8", "num_stages=3"}
    tiled = traced(dataclasses.replace(tiny_config, mlp_kernel="pallas",
                                       mlp_blocks=(16, 16, 16, 4, 2)))
    assert launches(tiled) == {"grid=(2, 4)", "num_warps=4", "num_stages=2"}


@pytest.mark.parametrize("change, refused", [
    (dict(activation="gelu_tanh"), "activation='gelu_tanh'"),
    (dict(mlp="plain"), "mlp='plain'"),
    (dict(mlp_bias=True), "mlp_bias=True"),
    (dict(remat="dots"), "remat='dots'"),
    (dict(lora=LoraConfig(rank=4, targets=("down_proj",))), "LoRA on ['down_proj']"),
    (dict(intermediate_size=72), "intermediate size that is a multiple of 16"),
    (dict(mlp_kernel="cuda"), "unknown mlp_kernel"),
])
def test_what_the_kernel_cannot_compute_is_refused_by_name(change, refused):
    options = dict(mlp_kernel="pallas", **change) if "mlp_kernel" not in change else change
    with pytest.raises(ValueError, match=refused.replace("[", r"\[").replace("]", r"\]")):
        dataclasses.replace(PRESETS["tiny"], **options)


def test_attention_adapters_leave_the_mlp_to_the_kernel():
    cfg = dataclasses.replace(PRESETS["tiny"], mlp_kernel="pallas",
                              lora=LoraConfig(rank=4, targets=("q_proj", "v_proj")))
    assert cfg.mlp_kernel == "pallas"


def test_blocks_must_be_triton_tiles():
    with pytest.raises(ValueError, match="power of two"):
        MlpBlocks(rows=48)
    with pytest.raises(ValueError, match="rows x mlp x depth"):
        MlpBlocks.from_tile("128x128")
    assert MlpBlocks.from_tile("64x128x32", warps=4).tile == "64x128x32"
    with pytest.raises(ValueError, match=r"mlp_blocks=\(48, 128, 64\): .*power of two"):
        dataclasses.replace(PRESETS["tiny"], mlp_blocks=(48, 128, 64))


def test_refused_on_a_mesh_that_splits_the_mlp():
    """Tensor parallelism splits the MLP's width over devices: the kernel's rows-only mapping
    (model/triton_call.py, as the LM-head kernels') cannot run there, and says which option to
    use instead."""
    operands = _operands(32, 32, 32)
    mesh = jax.sharding.AbstractMesh((1, 1, 2), MESH_AXES)
    with jax.sharding.use_abstract_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES), \
            pytest.raises(ValueError, match="'tensor': 2.*use mlp_kernel='xla'"):
        jax.eval_shape(gate_up_gradients, *operands)
