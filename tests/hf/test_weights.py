"""Streamed loading: every shard's slice read from the file equals the same slice of the whole."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from hafrm_jax.hf.tokenizer import ensure_pad_token
from hafrm_jax.hf.weights import CheckpointFiles, _dim_groups, _read_param_slice


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "q.weight": rng.normal(size=(4 * 3, 8)).astype(np.float32),  # [heads*hd, hidden]
        "o.weight": rng.normal(size=(8, 4 * 3)).astype(np.float32),  # [hidden, heads*hd]
        "norm.weight": rng.normal(size=(8,)).astype(np.float32),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return CheckpointFiles(str(tmp_path)), tensors


def test_dim_groups():
    assert _dim_groups((8, 12), (8, 4, 3)) == [[0], [1, 2]]
    assert _dim_groups((12, 8), (4, 3, 8)) == [[0, 1], [2]]
    assert _dim_groups((8, 3), (8, 1, 3)) == [[0], [1, 2]]  # one KV head
    with pytest.raises(ValueError):
        _dim_groups((8, 12), (8, 5, 3))


@pytest.mark.parametrize("index", [
    (slice(0, 8), slice(0, 4), slice(0, 3)),  # everything
    (slice(2, 6), slice(0, 4), slice(0, 3)),  # an fsdp shard of the hidden dim
    (slice(0, 8), slice(1, 3), slice(0, 3)),  # a tensor-parallel shard of heads
    (slice(0, 8), slice(0, 4), slice(1, 2)),  # a head_dim shard: not contiguous, read whole
])
def test_slices_of_a_split_transposed_kernel(files, index):
    reader, tensors = files
    whole = tensors["q.weight"].T.reshape(8, 4, 3)
    got = _read_param_slice(reader, "q.weight", True, (8, 4, 3), index)
    np.testing.assert_array_equal(got, whole[index])


def test_slices_of_output_projection_and_norm(files):
    reader, tensors = files
    whole = tensors["o.weight"].T.reshape(4, 3, 8)
    index = (slice(2, 4), slice(0, 3), slice(0, 4))
    np.testing.assert_array_equal(
        _read_param_slice(reader, "o.weight", True, (4, 3, 8), index), whole[index])
    np.testing.assert_array_equal(
        _read_param_slice(reader, "norm.weight", False, (8,), (slice(4, 8),)),
        tensors["norm.weight"][4:])


def test_shape_mismatch_names_the_file_and_tensor(files):
    reader, _ = files
    with pytest.raises(ValueError, match=r"model.safetensors: tensor q.weight has shape \(12, 8\)"):
        _read_param_slice(reader, "q.weight", True, (8, 5, 3), (slice(0, 8),) * 3)


class FakeTokenizer:
    def __init__(self, vocab, unk=None, eos="</s>", pad=None):
        self._vocab, self.unk_token, self.eos_token, self.pad_token = vocab, unk, eos, pad

    def get_vocab(self):
        return self._vocab

    @property
    def pad_token_id(self):
        return None if self.pad_token is None else self._vocab[self.pad_token]

    @property
    def eos_token_id(self):
        return self._vocab[self.eos_token]


@pytest.mark.parametrize("vocab, unk, expected", [
    ({"</s>": 0, "<unk>": 1, "<|pad|>": 2}, "<unk>", "<unk>"),
    ({"</s>": 0, "<|finetune_right_pad_id|>": 7, "<|reserved_special_token_0|>": 3}, None,
     "<|finetune_right_pad_id|>"),
    ({"</s>": 0, "<|reserved_special_token_1|>": 4, "<|reserved_special_token_0|>": 3}, None,
     "<|reserved_special_token_0|>"),
    ({"</s>": 0, "a": 1}, None, "</s>"),
])
def test_pad_token_is_not_eos_where_possible(vocab, unk, expected):
    tokenizer = FakeTokenizer(vocab, unk)
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == expected


def test_pad_equal_to_eos_is_replaced():
    tokenizer = FakeTokenizer({"</s>": 0, "<unk>": 1}, unk="<unk>", pad="</s>")
    ensure_pad_token(tokenizer)
    assert tokenizer.pad_token == "<unk>"
    keep = FakeTokenizer({"</s>": 0, "<pad>": 5}, pad="<pad>")
    ensure_pad_token(keep)
    assert keep.pad_token == "<pad>"


def test_a_tokenizer_without_eos_is_an_unsupported_model(tmp_path):
    from hafrm_jax.hf.config import UnsupportedModelError
    from hafrm_jax.hf.tokenizer import load_tokenizer
    from tests.helpers import bpe_tokenizer

    tokenizer = bpe_tokenizer(["a reward is read at the last token"], vocab_size=300)
    tokenizer.eos_token = None
    tokenizer.save_pretrained(str(tmp_path))
    with pytest.raises(UnsupportedModelError, match=f"the tokenizer in {tmp_path} has no EOS"):
        load_tokenizer(str(tmp_path))
