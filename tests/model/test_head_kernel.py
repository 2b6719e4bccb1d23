"""The LM head's Pallas kernels (run here by Pallas' interpreter: the same kernel bodies that
Triton compiles on a GPU) against the full float32 logits, and the log-prob sum with them
against XLA's kernels."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hafrm_jax.model.config import from_dict, preset, to_dict
from hafrm_jax.model.head_kernel import (HeadBlocks, log_normalisers, logit_gradients,
                                         pad_table, target_logits)
from hafrm_jax.model.readout import sequence_logprobs
from hafrm_jax.sharding import DEFAULT_RULES, MESH_AXES

SMALL = HeadBlocks(rows=32, vocab=128, depth=32)


@pytest.mark.parametrize("vocab_major,with_bias,softcap", [
    (True, False, None), (False, True, None), (True, True, 3.0), (False, False, 3.0)])
def test_kernels_equal_the_full_logits(vocab_major, with_bias, softcap):
    """Rows (40) and a vocabulary (300) that fill no tile, a hidden size (48) that the depth
    block (32) does not divide: every padding path."""
    rng = np.random.default_rng(0)
    rows_n, hidden, vocab = 40, 48, 300
    rows = jnp.asarray(rng.normal(size=(rows_n, hidden)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(vocab, hidden) if vocab_major else (hidden, vocab))
                         / 3, jnp.float32)
    bias = jnp.asarray(rng.normal(size=(vocab,)), jnp.float32) if with_bias else None
    targets = jnp.asarray(rng.integers(0, vocab, size=(rows_n,)), jnp.int32)
    coef = jnp.asarray(rng.normal(size=(rows_n,)), jnp.float32).at[:5].set(0)  # unscored rows

    logits = rows @ (weight.T if vocab_major else weight)
    if bias is not None:
        logits = logits + bias
    if softcap is not None:
        logits = jnp.tanh(logits / softcap) * softcap
    want_d_logits = coef[:, None] * (jax.nn.one_hot(targets, vocab) - jax.nn.softmax(logits))
    if softcap is not None:
        want_d_logits = want_d_logits * (1 - jnp.square(logits / softcap))

    table = pad_table(weight, vocab_major, SMALL)
    assert table.shape == ((384, hidden) if vocab_major else (hidden, 384))
    options = dict(vocab_major=vocab_major, softcap=softcap)
    lse = log_normalisers(rows, table, bias, vocab=vocab, blocks=SMALL, **options)
    np.testing.assert_allclose(lse, jax.nn.logsumexp(logits, axis=-1), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(target_logits(rows, table, bias, targets, **options),
                               jnp.take_along_axis(logits, targets[:, None], 1)[:, 0],
                               rtol=1e-6, atol=1e-5)
    d_logits, d_bias = logit_gradients(rows, table, bias, targets, lse, coef, vocab=vocab,
                                       blocks=SMALL, **options)
    assert d_logits.shape == (rows_n, 384) and d_logits.dtype == jnp.float32
    np.testing.assert_allclose(d_logits[:, :vocab], want_d_logits, atol=1e-6)
    assert not np.any(d_logits[:, vocab:])  # padded columns: no mass, no gradient
    if with_bias:
        np.testing.assert_allclose(d_bias[:vocab], want_d_logits.sum(0), atol=1e-5)
    else:
        assert d_bias is None


def _logprob_inputs(vocab_major: bool, seed: int = 1):
    rng = np.random.default_rng(seed)
    batch, seq, hidden, vocab = 3, 20, 32, 200
    pos = np.arange(seq)
    starts, ends = np.array([[5], [8], [12]]), np.array([[18], [20], [15]])
    return dict(
        hidden=jnp.asarray(rng.normal(size=(batch, seq, hidden)), jnp.float32),
        weight=jnp.asarray(rng.normal(size=(vocab, hidden) if vocab_major else (hidden, vocab))
                           / 3, jnp.float32),
        bias=jnp.asarray(rng.normal(size=(vocab,)), jnp.float32),
        ids=jnp.asarray(rng.integers(0, vocab, size=(batch, seq)), jnp.int32),
        response=jnp.asarray((pos >= starts) & (pos < ends), jnp.int32))


@pytest.mark.parametrize("vocab_major", [True, False])
def test_logprobs_and_gradients_equal_xla_kernels(vocab_major):
    """sequence_logprobs, forward and custom backward, with and without the kernels: chunks of
    8 positions (3 batch rows: 24 rows a chunk, padded to the 32-row tile), a bias and a cap."""
    x = _logprob_inputs(vocab_major)
    row_weights = jnp.asarray([1.0, -2.0, 0.5])

    def total(hidden, weight, bias, blocks):
        return jnp.sum(row_weights * sequence_logprobs(
            hidden, weight, x["ids"], x["response"], 8, bias, 4.0, vocab_major, blocks))

    grad = jax.value_and_grad(total, argnums=(0, 1, 2))
    want = grad(x["hidden"], x["weight"], x["bias"], None)
    got = jax.jit(grad, static_argnums=3)(x["hidden"], x["weight"], x["bias"], SMALL)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    for a, b in zip(got[1], want[1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_kernels_stay_within_rounding_of_float32():
    """bf16 compute (the GPU setting): the kernels' log-probs and gradients against XLA's in
    bf16, and both against float32."""
    x = _logprob_inputs(vocab_major=True, seed=2)

    def total(hidden, weight, blocks):
        return jnp.sum(sequence_logprobs(hidden, weight, x["ids"], x["response"], 8,
                                         vocab_major=True, kernel_blocks=blocks))

    grad = jax.value_and_grad(total, argnums=(0, 1))
    high = grad(x["hidden"], x["weight"], None)
    low_hidden = x["hidden"].astype(jnp.bfloat16)
    xla = grad(low_hidden, x["weight"], None)
    kernels = grad(low_hidden, x["weight"], SMALL)
    assert kernels[1][0].dtype == jnp.bfloat16 and kernels[1][1].dtype == jnp.float32
    np.testing.assert_allclose(kernels[0], xla[0], rtol=1e-5)
    for k, a, h in zip(kernels[1], xla[1], high[1]):
        k, a, h = (np.asarray(v, np.float32) for v in (k, a, h))
        assert np.linalg.norm(k - a) / np.linalg.norm(a) < 1e-2
        assert np.linalg.norm(k - h) / np.linalg.norm(h) < 2e-2


def test_tiles_must_be_powers_of_two():
    with pytest.raises(ValueError, match="power of two"):
        HeadBlocks(rows=96)
    with pytest.raises(ValueError, match="warps=3"):
        HeadBlocks(warps=3)
    with pytest.raises(ValueError, match="stages=0"):
        HeadBlocks(stages=0)
    with pytest.raises(ValueError, match="rows x vocab x depth"):
        HeadBlocks.from_tile("128x128")
    assert HeadBlocks.from_tile("64x256x32", warps=4, stages=2) == HeadBlocks(64, 256, 32, 4, 2)
    assert HeadBlocks(64, 256, 32).tile == "64x256x32"
    assert (HeadBlocks().num_warps, HeadBlocks(64, 128, 64).num_warps) == (8, 4)
    with pytest.raises(ValueError, match="rows, vocab, depth"):
        preset("tiny", lm_head_kernel="pallas", lm_head_blocks=(128, 128))
    with pytest.raises(ValueError, match="power of two"):
        preset("tiny", lm_head_kernel="pallas", lm_head_blocks=(128, 8, 64))
    with pytest.raises(ValueError, match="lm_head_kernel"):
        preset("tiny", lm_head_kernel="triton")
    with pytest.raises(ValueError, match="multiple of 16"):
        preset("tiny", hidden_size=72, lm_head_kernel="pallas")
    cfg = preset("tiny", lm_head_kernel="pallas", lm_head_blocks=(64, 256, 32))
    assert cfg.lm_head_kernel_blocks == HeadBlocks(64, 256, 32)
    assert dataclasses.replace(cfg, lm_head_kernel="xla").lm_head_kernel_blocks is None
    # as a workdir's model_config.json stores it, and reads it back (hashable: a static arg)
    saved = from_dict(json.loads(json.dumps(to_dict(cfg))))
    assert saved == cfg and hash(saved) == hash(cfg)
    launched = dataclasses.replace(cfg, lm_head_blocks=(64, 256, 32, None, 4))  # warps: the rule
    assert launched.lm_head_kernel_blocks == HeadBlocks(64, 256, 32, stages=4)
    assert from_dict(json.loads(json.dumps(to_dict(launched)))) == launched


@pytest.mark.parametrize("shape,rules,refused", [
    ((1, 1, 2), DEFAULT_RULES, "'tensor': 2"),  # tensor parallelism splits the vocabulary
    ((2, 1, 1), (), "no logical-axis rules"),  # no rules: which axes split the batch is unknown
])
def test_refused_on_a_mesh_it_cannot_split_by_rows(shape, rules, refused):
    """A pallas_call has no partitioning rule: the kernels run per device on its rows of the
    batch (tests/sharding checks the result on meshes of 8 CPU devices), and any other split of
    the mesh is refused with the option to use instead. (Several-device runs are tested in
    tests/sharding: the device count is fixed when JAX starts.)"""
    x = _logprob_inputs(vocab_major=True)
    mesh = jax.sharding.AbstractMesh(shape, MESH_AXES)
    with jax.sharding.use_abstract_mesh(mesh), nn.logical_axis_rules(rules), \
            pytest.raises(ValueError, match=refused):
        jax.eval_shape(lambda h: sequence_logprobs(h, x["weight"], x["ids"], x["response"], 8,
                                                   vocab_major=True, kernel_blocks=SMALL),
                       x["hidden"])
