"""Chunked response log-probs against the naive full-vocabulary computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import dot_operand_types

from hafrm_jax.model.readout import (gather_last_token, last_token_index, max_and_sum_exp,
                                     next_token_targets, scored_token_counts, sequence_logprobs)


def naive_logprobs(hidden, weight, ids, response_mask):
    """log_softmax over the whole [batch, seq, vocab] logits, summed over response tokens."""
    logits = np.einsum("bsd,dv->bsv", np.asarray(hidden, np.float64), np.asarray(weight, np.float64))
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    total = np.zeros(ids.shape[0])
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            if response_mask[b, t]:  # token t is predicted by position t - 1
                total[b] += logp[b, t - 1, ids[b, t]]
    return total


@pytest.mark.parametrize("chunk", [1, 4, 5, 16, 64])
def test_chunked_equals_naive(chunk):
    rng = np.random.default_rng(0)
    batch, seq, dim, vocab = 3, 13, 8, 50
    hidden = rng.normal(size=(batch, seq, dim)).astype(np.float32)
    weight = rng.normal(size=(dim, vocab)).astype(np.float32)
    ids = rng.integers(0, vocab, size=(batch, seq)).astype(np.int32)
    # prompt of 4 tokens, then the response (EOS last), then padding
    lengths = np.array([13, 9, 6])
    pos = np.arange(seq)
    response = ((pos >= 4) & (pos < lengths[:, None])).astype(np.int32)
    got = sequence_logprobs(jnp.asarray(hidden), jnp.asarray(weight), jnp.asarray(ids),
                            jnp.asarray(response), chunk)
    np.testing.assert_allclose(got, naive_logprobs(hidden, weight, ids, response), rtol=1e-5)


def test_masking_prompt_padding_and_eos():
    """Changing a prompt or padding token's target never changes the sum; the EOS does."""
    rng = np.random.default_rng(1)
    hidden = jnp.asarray(rng.normal(size=(1, 8, 4)).astype(np.float32))
    weight = jnp.asarray(rng.normal(size=(4, 11)).astype(np.float32))
    ids = np.array([[1, 2, 3, 4, 5, 10, 0, 0]], np.int32)  # prompt 1 2 3, response 4 5 EOS(10)
    response = np.array([[0, 0, 0, 1, 1, 1, 0, 0]], np.int32)
    base = sequence_logprobs(hidden, weight, jnp.asarray(ids), jnp.asarray(response), 3)

    def with_token(i, tok):
        changed = ids.copy()
        changed[0, i] = tok
        return sequence_logprobs(hidden, weight, jnp.asarray(changed), jnp.asarray(response), 3)

    np.testing.assert_allclose(with_token(1, 7), base)  # prompt token
    np.testing.assert_allclose(with_token(7, 7), base)  # padding token
    assert not np.allclose(with_token(5, 7), base)  # the EOS is scored


def test_gradients_match_naive():
    rng = np.random.default_rng(2)
    hidden = jnp.asarray(rng.normal(size=(2, 7, 4)).astype(np.float32))
    weight = jnp.asarray(rng.normal(size=(4, 9)).astype(np.float32))
    ids = jnp.asarray(rng.integers(0, 9, size=(2, 7)).astype(np.int32))
    response = jnp.asarray(np.array([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]], np.int32))

    def naive(h, w):
        logp = jax.nn.log_softmax(jnp.einsum("bsd,dv->bsv", h, w), -1)[:, :-1]
        tok = jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
        return jnp.sum(tok * response[:, 1:])

    chunked = lambda h, w: jnp.sum(sequence_logprobs(h, w, ids, response, 3))
    for a, b in zip(jax.grad(chunked, (0, 1))(hidden, weight), jax.grad(naive, (0, 1))(hidden, weight)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_gradients_match_naive_with_bias_softcap_and_left_padding():
    """The custom backward pass (recomputed logits, d_logits = g * (onehot - softmax), through
    a soft cap and a bias) against autodiff of the full log-softmax, with a different cotangent
    per row and responses that start at different positions."""
    rng = np.random.default_rng(4)
    batch, seq, dim, vocab, cap = 3, 11, 6, 13, 2.0
    hidden = jnp.asarray(rng.normal(size=(batch, seq, dim)).astype(np.float32))
    weight = jnp.asarray(rng.normal(size=(dim, vocab)).astype(np.float32))
    bias = jnp.asarray(rng.normal(size=(vocab,)).astype(np.float32))
    ids = jnp.asarray(rng.integers(0, vocab, size=(batch, seq)).astype(np.int32))
    response = jnp.asarray(np.array([[0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1],  # left padded
                                     [0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0],
                                     [0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]], np.int32))
    row_weights = jnp.asarray([0.7, -1.3, 2.1])

    def naive(h, w, b):
        logits = jnp.einsum("bsd,dv->bsv", h, w) + b
        logp = jax.nn.log_softmax(jnp.tanh(logits / cap) * cap, -1)[:, :-1]
        tok = jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
        return jnp.sum(row_weights * jnp.sum(tok * response[:, 1:], -1))

    def chunked(h, w, b):
        return jnp.sum(row_weights * sequence_logprobs(h, w, ids, response, 2, b, cap))

    np.testing.assert_allclose(chunked(hidden, weight, bias), naive(hidden, weight, bias),
                               rtol=1e-5)
    got = jax.jit(jax.grad(chunked, (0, 1, 2)))(hidden, weight, bias)
    want = jax.grad(naive, (0, 1, 2))(hidden, weight, bias)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_prompt_positions_never_reach_the_lm_head():
    """Scored positions are moved to the front and the chunks past them are skipped: hidden
    states that only a skipped chunk would read (here NaN) touch neither the value nor the
    gradient. Computing them and masking afterwards would give NaN (NaN * 0)."""
    rng = np.random.default_rng(5)
    seq, prompt, chunk = 16, 12, 4  # 3 scored positions -> only the first chunk is computed
    hidden = rng.normal(size=(1, seq, 4)).astype(np.float32)
    weight = jnp.asarray(rng.normal(size=(4, 9)).astype(np.float32))
    ids = jnp.asarray(rng.integers(0, 9, size=(1, seq)).astype(np.int32))
    response = jnp.asarray((np.arange(seq) >= prompt)[None].astype(np.int32))
    want = naive_logprobs(hidden, weight, np.asarray(ids), np.asarray(response))
    # The first chunk holds scored positions 11..14 and the first unscored one, position 0.
    hidden[0, 1:11] = np.nan
    hidden[0, 15] = np.nan
    total = lambda h: jnp.sum(sequence_logprobs(h, weight, ids, response, chunk))
    np.testing.assert_allclose(total(jnp.asarray(hidden)), want, rtol=1e-5)
    grad = np.asarray(jax.jit(jax.grad(total))(jnp.asarray(hidden)))
    assert np.isfinite(grad).all()
    assert np.all(grad[0, 1:11] == 0) and np.any(grad[0, 11:15] != 0)


def test_bf16_backward_runs_bf16_matmuls_and_stays_close():
    """In bf16 compute, every matmul of the log-prob gradient takes bf16 operands (none mixes
    in the float32 cotangent of the [.., vocab] logits), and the gradients stay within bf16
    rounding of the float32 ones."""
    rng = np.random.default_rng(3)
    hidden = rng.normal(size=(2, 12, 16)).astype(np.float32)
    weight = (rng.normal(size=(16, 40)) / 4).astype(np.float32)  # float32 master weight
    ids = jnp.asarray(rng.integers(0, 40, size=(2, 12)).astype(np.int32))
    response = jnp.asarray((np.arange(12) >= 5)[None].repeat(2, 0).astype(np.int32))

    def total(h, w):
        return jnp.sum(sequence_logprobs(h, w, ids, response, 4))

    grad = jax.grad(total, (0, 1))
    dots = dot_operand_types(grad, jnp.asarray(hidden, jnp.bfloat16), jnp.asarray(weight))
    assert len(dots) == 4  # forward, recomputed forward, d_hidden, d_weight
    assert all(t.endswith("bf16>") for pair in dots for t in pair), dots

    low = grad(jnp.asarray(hidden, jnp.bfloat16), jnp.asarray(weight))
    high = grad(jnp.asarray(hidden), jnp.asarray(weight))
    assert low[1].dtype == jnp.float32  # the master weight's gradient stays float32
    for a, b in zip(low, high):
        a, b = np.asarray(a, np.float32), np.asarray(b)
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 2e-2


def test_last_token_index_either_padding_side():
    right = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(last_token_index(right), [2, 4])
    np.testing.assert_array_equal(last_token_index(left), [4, 4])
    hidden = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    np.testing.assert_array_equal(gather_last_token(hidden, right), hidden[jnp.arange(2), jnp.array([2, 4])])


def _loop_instructions(hlo_text: str) -> list[str]:
    """Instruction lines of the computations that run inside a `while` loop: its bodies and
    everything they call (fusions, nested computations), from compiled HLO text."""
    import re

    computations, current = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)
        if header:
            current = computations.setdefault(header.group(1), [])
        elif current is not None and line.startswith("  "):
            current.append(line)
    pending = re.findall(r"\bbody=%([\w.\-]+)", hlo_text)
    seen = set()
    while pending:
        name = pending.pop()
        if name in seen or name not in computations:
            continue
        seen.add(name)
        for line in computations[name]:
            pending += re.findall(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)", line)
    return [line for name in seen for line in computations[name]]


def test_chunk_loops_write_their_buffers_in_place():
    """The backward loop writes each chunk's d_hidden into one buffer; in bf16 compute the
    compiled loops must not copy that whole [chunks, batch, chunk, hidden] buffer (as they did,
    every chunk, when it was written with `.at[c].set`). A copy outside the loops, once a step
    (jax 0.11 on CPU lays the buffer out that way), is not what this guards against."""
    import re

    rng = np.random.default_rng(7)
    batch, seq, dim, vocab, chunk = 4, 64, 32, 1000, 16
    hidden = jnp.asarray(rng.normal(size=(batch, seq, dim)), jnp.bfloat16)
    weight = jnp.asarray(rng.normal(size=(dim, vocab)) / 4, jnp.float32)
    ids = jnp.asarray(rng.integers(0, vocab, size=(batch, seq)), jnp.int32)
    response = jnp.asarray((np.arange(seq) >= seq // 2)[None].repeat(batch, 0), jnp.int32)
    grad = jax.jit(jax.grad(
        lambda h, w: jnp.sum(sequence_logprobs(h, w, ids, response, chunk)), (0, 1)))
    text = grad.lower(hidden, weight).compile().as_text()
    buffer = f"bf16[{seq // chunk},{batch},{chunk},{dim}]"
    loops = _loop_instructions(text)
    assert any(buffer in line for line in loops)  # the buffer is carried through a loop
    copies = [line for line in loops if re.search(r"= \S+ copy\(", line) and buffer in line]
    assert not copies, copies


def test_max_and_sum_exp_is_logsumexp_in_one_reduction():
    """The one-pass (max, sum of exponentials) pair gives logsumexp, with -inf entries, whole
    rows of -inf and large logits, and the compiled program reduces the logits once."""
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=30.0, size=(4, 7, 300)).astype(np.float32)
    logits[0, 0, :5] = -np.inf
    logits[1, 2, :] = -np.inf
    logits[2, 3, 7] = 1e4
    m, s = max_and_sum_exp(jnp.asarray(logits))
    np.testing.assert_allclose(m + jnp.log(s), jax.nn.logsumexp(jnp.asarray(logits), axis=-1),
                               rtol=1e-6)
    text = jax.jit(max_and_sum_exp).lower(jnp.asarray(logits)).as_text()
    assert text.count("stablehlo.reduce") == 1, text


def _random_head_inputs(seed, batch, seq, dim, vocab, prompt, dtype=jnp.float32):
    """hidden [batch, seq, dim] in `dtype`, a float32 weight [dim, vocab], token ids, and a
    response mask of every position from `prompt` on."""
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(batch, seq, dim)), dtype)
    weight = jnp.asarray(rng.normal(size=(dim, vocab)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, vocab, size=(batch, seq)), jnp.int32)
    response = jnp.asarray((np.arange(seq) >= prompt)[None].repeat(batch, 0), jnp.int32)
    return hidden, weight, ids, response


def test_vocab_major_weight_is_the_transposed_head():
    """A tied embedding [vocab, hidden] passed as stored (vocab_major) gives the same log-probs
    as its transpose, and its gradient is the transpose of the [hidden, vocab] one."""
    hidden, weight, ids, response = _random_head_inputs(5, 2, 12, 6, 40, prompt=5)

    def total(h, w, vocab_major):
        return jnp.sum(sequence_logprobs(h, w, ids, response, 4, vocab_major=vocab_major))

    plain = jax.value_and_grad(total, (0, 1))(hidden, weight, False)
    major = jax.value_and_grad(total, (0, 1))(hidden, weight.T, True)
    np.testing.assert_allclose(major[0], plain[0], rtol=1e-6)
    np.testing.assert_allclose(major[1][0], plain[1][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(major[1][1], plain[1][1].T, rtol=1e-5, atol=1e-6)


def _equations(jaxpr, inside_loop=False):
    """(equation, inside a loop body) for every equation of a jaxpr and its sub-jaxprs."""
    for eqn in jaxpr.eqns:
        yield eqn, inside_loop
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _equations(sub, inside_loop or eqn.primitive.name == "while")


def test_tied_head_is_cast_once_per_pass_and_never_transposed():
    """The tied embedding [vocab, hidden] (float32 master) reaches the LM-head matmuls as
    stored: cast to the compute dtype once in the forward pass and once in the backward pass,
    outside the chunk loops, and never transposed (each was a pass over the whole table per
    chunk or per step on the H100)."""
    dim, vocab = 8, 64
    hidden, weight, ids, response = _random_head_inputs(8, 2, 16, dim, vocab, prompt=4,
                                                        dtype=jnp.bfloat16)
    embedding = weight.T  # [vocab, hidden], as the tied table is stored
    # chunks of 3 positions: a chunk's d_logits [2 * 3, vocab] must not look like the table
    grad = jax.grad(lambda h, w: jnp.sum(sequence_logprobs(h, w, ids, response, 3,
                                                           vocab_major=True)), (0, 1))
    table = {(vocab, dim), (dim, vocab)}
    casts, transposes = [], []
    for eqn, in_loop in _equations(jax.make_jaxpr(grad)(hidden, embedding).jaxpr):
        shapes = {tuple(v.aval.shape) for v in eqn.invars if hasattr(v, "aval")}
        if eqn.primitive.name == "convert_element_type" and shapes & table:
            casts.append(in_loop)
        if eqn.primitive.name == "transpose" and shapes & table:
            transposes.append(eqn)
    assert casts == [False, False], casts
    assert not transposes, transposes


def test_scored_token_counts_leave_out_what_nothing_predicts():
    """IPO normalises by the tokens the log-prob sum scores: with an empty prompt (no BOS) the
    first response token has no position before it."""
    response = jnp.array([[0, 0, 1, 1, 1, 0],    # prompt of 2, response of 3, padding
                          [1, 1, 1, 1, 0, 0]])   # empty prompt: 4 response tokens, 3 scored
    _, weights = next_token_targets(jnp.zeros_like(response), response)
    np.testing.assert_array_equal(scored_token_counts(response), [3.0, 3.0])
    np.testing.assert_array_equal(scored_token_counts(response), weights.sum(-1))
