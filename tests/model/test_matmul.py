"""einsum_f32: float32 results, and a backward pass in the compute dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import dot_operand_types

from hafrm_jax.model.decoder import dot_product_attention
from hafrm_jax.model.matmul import add_bias, einsum_f32


@pytest.mark.parametrize("spec,lhs_shape,rhs_shape", [
    ("nd,dv->nv", (6, 4), (4, 9)),
    ("btkgd,bskd->bkgts", (2, 5, 2, 3, 4), (2, 5, 2, 4)),
])
def test_float32_gradients_equal_plain_einsum(spec, lhs_shape, rhs_shape):
    rng = np.random.default_rng(0)
    lhs = jnp.asarray(rng.normal(size=lhs_shape).astype(np.float32))
    rhs = jnp.asarray(rng.normal(size=rhs_shape).astype(np.float32))
    probe = jnp.asarray(rng.normal(size=jnp.einsum(spec, lhs, rhs).shape).astype(np.float32))
    ours = jax.grad(lambda a, b: jnp.sum(einsum_f32(spec, a, b) * probe), (0, 1))(lhs, rhs)
    plain = jax.grad(lambda a, b: jnp.sum(jnp.einsum(spec, a, b) * probe), (0, 1))(lhs, rhs)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_attention_backward_runs_bf16_matmuls():
    rng = np.random.default_rng(1)
    b, t, heads, kv, d = 2, 6, 4, 2, 8
    q = jnp.asarray(rng.normal(size=(b, t, heads, d)), jnp.bfloat16)
    k = jnp.asarray(rng.normal(size=(b, t, kv, d)), jnp.bfloat16)
    v = jnp.asarray(rng.normal(size=(b, t, kv, d)), jnp.bfloat16)
    mask = jnp.tril(jnp.ones((t, t), bool))[None].repeat(b, 0)

    def loss(q, k, v):
        return jnp.sum(dot_product_attention(q, k, v, mask, d ** -0.5, None).astype(jnp.float32))

    dots = dot_operand_types(jax.grad(loss, (0, 1, 2)), q, k, v)
    assert len(dots) >= 4  # scores, output, and their gradients
    assert all(t.endswith("bf16>") for pair in dots for t in pair), dots
    # and the gradients stay within bf16 rounding of float32 attention
    low = jax.grad(loss, (0, 1, 2))(q, k, v)
    high = jax.grad(loss, (0, 1, 2))(*(x.astype(jnp.float32) for x in (q, k, v)))
    for a, c in zip(low, high):
        a, c = np.asarray(a, np.float32), np.asarray(c)
        assert np.linalg.norm(a - c) / np.linalg.norm(c) < 3e-2


def test_master_weight_gets_a_float32_gradient():
    rows = jnp.ones((3, 4), jnp.bfloat16)
    weight = jnp.ones((4, 5), jnp.float32)
    grad = jax.grad(lambda w: jnp.sum(einsum_f32("nd,dv->nv", rows, w)))(weight)
    assert grad.dtype == jnp.float32
    np.testing.assert_array_equal(grad, np.full((4, 5), 3.0))


@pytest.mark.parametrize("spec", ["...d,dv->...v", "nn,nv->nv", "nd,dv->v"])
def test_specs_it_cannot_transpose_are_refused(spec):
    with pytest.raises(ValueError, match="explicit indices"):
        einsum_f32(spec, jnp.ones((2, 2)), jnp.ones((2, 2)))


def test_bias_gradient_is_summed_in_float32():
    """16,384 bf16 cotangent rows summed into a bias: in float32 the gradient is the exact sum
    to float32 rounding; plain autodiff (the transpose of a bf16 broadcast) sums in bf16."""
    rng = np.random.default_rng(0)
    rows = jnp.asarray(rng.normal(size=(16, 1024, 8)) + 0.5, jnp.bfloat16)  # cotangent rows
    bias = jnp.zeros((8,), jnp.float32)
    exact = np.asarray(rows, np.float64).sum(axis=(0, 1))

    def gradient(add):
        loss = lambda b: jnp.sum(add(jnp.zeros_like(rows), b).astype(jnp.float32) * rows)
        return np.asarray(jax.jit(jax.grad(loss))(bias), np.float64)

    ours = gradient(add_bias)
    plain = gradient(lambda y, b: y + b.astype(y.dtype))
    assert jax.grad(lambda b: jnp.sum(add_bias(rows, b)))(bias).dtype == jnp.float32
    np.testing.assert_allclose(ours, exact, rtol=1e-5)
    assert np.max(np.abs(plain - exact) / np.abs(exact)) > 1e-3  # what it replaces
    # the forward pass is the plain sum, in y's dtype
    out = add_bias(rows, jnp.ones((8,), jnp.float32))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out, rows + jnp.ones((8,), jnp.bfloat16))
