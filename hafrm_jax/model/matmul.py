"""Mixed-precision linear algebra whose backward pass keeps float32 where it sums.

`einsum_f32`: matmuls with a float32 result whose backward pass runs in the compute dtype.

Where a product feeds float32 math (the LM head's log-softmax, attention's softmax), it is
computed with `preferred_element_type=float32`. Plain autodiff then hands its backward matmuls
a float32 cotangent, and XLA upcasts the other (bf16) operand to meet it: the gradient matmuls
over the largest tensors of the step run in float32 (seen in the lowered program; on GPUs that
is TF32 at best). `einsum_f32` keeps the forward exactly as before and casts the cotangent to
the compute dtype first, so the backward matmuls take bf16 operands and accumulate in float32,
as mixed precision does everywhere else in the step (and as PyTorch autocast does). With
float32 compute (the CPU tests) nothing changes.

`add_bias`: a bias added in the compute dtype whose gradient is summed in float32. Plain
autodiff sums a bf16 output's cotangent over batch and sequence in bf16 (the transpose of the
broadcast; XLA then reduces 16k bf16 values in bf16 adds, as compiled for an H100), where
PyTorch's bias gradients accumulate in float32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _operand_specs(spec: str) -> tuple[str, str, str]:
    inputs, out = spec.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
    for side, other in ((lhs, rhs), (rhs, lhs)):
        if "." in side or len(set(side)) != len(side) or not set(side) <= set(other + out):
            raise ValueError(f"einsum_f32 needs explicit indices, none repeated in an operand and "
                             f"none summed within one operand; got {spec!r}")
    return lhs, rhs, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def einsum_f32(spec: str, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    """float32 `einsum(spec, lhs, rhs)` computed in lhs's dtype; rhs is cast to it (so a float32
    master weight can be passed as is, and receives a float32 gradient)."""
    _operand_specs(spec)
    return jnp.einsum(spec, lhs, rhs.astype(lhs.dtype), preferred_element_type=jnp.float32)


def _einsum_f32_fwd(spec, lhs, rhs):
    return einsum_f32(spec, lhs, rhs), (lhs, rhs)


def _einsum_f32_bwd(spec, residuals, cotangent):
    lhs, rhs = residuals
    lhs_spec, rhs_spec, out_spec = _operand_specs(spec)
    cotangent = cotangent.astype(lhs.dtype)
    d_lhs = jnp.einsum(f"{out_spec},{rhs_spec}->{lhs_spec}", cotangent, rhs.astype(lhs.dtype),
                       preferred_element_type=jnp.float32)
    d_rhs = jnp.einsum(f"{lhs_spec},{out_spec}->{rhs_spec}", lhs, cotangent,
                       preferred_element_type=jnp.float32)
    return d_lhs.astype(lhs.dtype), d_rhs.astype(rhs.dtype)


einsum_f32.defvjp(_einsum_f32_fwd, _einsum_f32_bwd)


@jax.custom_vjp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """y [..., *bias.shape] + bias, in y's dtype; bias's gradient is summed in float32 and
    returned in bias's dtype (a float32 master bias gets a float32 gradient)."""
    return y + bias.astype(y.dtype)


def _add_bias_fwd(y, bias):
    return add_bias(y, bias), bias


def _add_bias_bwd(bias, cotangent):
    leading = tuple(range(cotangent.ndim - bias.ndim))
    return cotangent, jnp.sum(cotangent, axis=leading, dtype=jnp.float32).astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)
