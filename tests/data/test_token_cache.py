"""Tokenised splits on disk: read back equal to tokenising, named by everything they follow
from, and tokenised again (never read wrong) when a file is damaged or foreign."""

import dataclasses
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open

from tests.helpers import write_jsonl

from configs.default import get_config
from hafrm_jax.data import synthetic, token_cache, tokenize
from hafrm_jax.data.pipeline import prepare_data
from hafrm_jax.data.records import PreferencePair
from hafrm_jax.data.token_cache import TokenizeSettings, tokenize_cached

SETTINGS = TokenizeSettings(max_length=12, max_prompt_length=8)


@pytest.fixture(scope="module")
def tokenizer():
    return synthetic.build_tokenizer()


@pytest.fixture(scope="module")
def pairs():
    chat = synthetic.generate_pairs(30, seed=3)
    text = [PreferencePair("cat dog red", "blue", "green"),
            PreferencePair("cat dog", "red blue one two", "red blue one three")]  # identical cut
    return chat + text


def no_tokenising(*args, **kwargs):
    raise AssertionError("tokenised, where the split should have been read")


def assert_same(a, b):
    for field in ("tokens", "lengths", "prompt_lengths", "index"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
        assert getattr(a, field).dtype == getattr(b, field).dtype, field


def test_a_split_read_back_equals_the_tokenised_one(tmp_path, tokenizer, pairs, monkeypatch):
    indices = np.arange(len(pairs)) * 3 + 5
    expected, expected_stats = tokenize.tokenize_pairs(
        pairs, tokenizer, SETTINGS.max_length, SETTINGS.max_prompt_length, indices=indices)
    assert 0 < expected_stats.identical_dropped < len(pairs) and expected_stats.prompts_truncated
    first, first_stats = tokenize_cached(pairs, tokenizer, SETTINGS, indices, str(tmp_path),
                                         "train")
    (written,) = os.listdir(tmp_path)
    assert written.startswith("train-") and written.endswith(".safetensors")
    monkeypatch.setattr(tokenize, "tokenize_pairs", no_tokenising)
    read, read_stats = tokenize_cached(pairs, tokenizer, SETTINGS, indices, str(tmp_path),
                                       "train")
    assert_same(first, expected)
    assert_same(read, expected)
    assert read_stats == first_stats == expected_stats
    # Only the real tokens are stored: the padding is rebuilt.
    with safe_open(str(tmp_path / written), framework="numpy") as f:
        assert f.get_tensor("tokens").shape == (expected.lengths.sum(),)


def test_every_input_of_the_tokens_names_another_file(tokenizer, pairs):
    indices = np.arange(len(pairs))
    digest = token_cache.tokenizer_digest(tokenizer)
    key = token_cache.split_key(pairs, indices, digest, SETTINGS)
    assert token_cache.split_key(pairs, indices, digest, SETTINGS) == key
    # A tokenizer built again from nothing saves the same files.
    assert token_cache.tokenizer_digest(synthetic.build_tokenizer()) == digest

    edited = list(pairs)
    edited[4] = dataclasses.replace(edited[4], rejected=edited[4].rejected + " cat")
    other_template = synthetic.build_tokenizer()
    other_template.chat_template = other_template.chat_template.replace(":", " :")
    other_eos = synthetic.build_tokenizer()
    other_eos.eos_token = synthetic.PAD
    changed = [
        token_cache.split_key(edited, indices, digest, SETTINGS),
        token_cache.split_key(pairs[::-1], indices, digest, SETTINGS),
        token_cache.split_key(pairs, indices + 1, digest, SETTINGS),
        token_cache.split_key(pairs, indices, token_cache.tokenizer_digest(other_template),
                              SETTINGS),
        token_cache.split_key(pairs, indices, token_cache.tokenizer_digest(other_eos), SETTINGS),
    ] + [token_cache.split_key(pairs, indices, digest, dataclasses.replace(SETTINGS, **change))
         for change in ({"max_length": 13}, {"max_prompt_length": 7}, {"chat_format": "hh"},
                        {"prompt_template": "Q: {prompt}"})]
    assert len(set(changed + [key])) == len(changed) + 1


def test_the_tokenizer_digest_is_the_same_in_another_process(tokenizer):
    code = ("from hafrm_jax.data import synthetic, token_cache; "
            "print(token_cache.tokenizer_digest(synthetic.build_tokenizer()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                             os.path.abspath(__file__)))))
    assert out.stdout.strip() == token_cache.tokenizer_digest(tokenizer)


def test_a_damaged_or_foreign_file_is_tokenised_again(tmp_path, tokenizer, pairs, caplog):
    indices = np.arange(len(pairs))
    expected, _ = tokenize_cached(pairs, tokenizer, SETTINGS, indices, str(tmp_path), "test")
    (name,) = os.listdir(tmp_path)
    path = tmp_path / name
    whole = path.read_bytes()
    key = name.removeprefix("test-").removesuffix(".safetensors")

    path.write_bytes(whole[:len(whole) // 2])  # a cut file
    with caplog.at_level(logging.WARNING):
        data, _ = tokenize_cached(pairs, tokenizer, SETTINGS, indices, str(tmp_path), "test")
    assert "cannot be read back" in caplog.text and name in caplog.text
    assert_same(data, expected)
    assert_same(token_cache.load_split(str(path), key)[0], expected)  # written again, whole

    # Another split's file under this name (copied by hand): its key is not this one.
    other, _ = tokenize_cached(pairs[:10], tokenizer, SETTINGS, indices[:10], str(tmp_path),
                               "validation")
    (other_name,) = set(os.listdir(tmp_path)) - {name}
    path.write_bytes((tmp_path / other_name).read_bytes())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        data, _ = tokenize_cached(pairs, tokenizer, SETTINGS, indices, str(tmp_path), "test")
    assert "written for other data" in caplog.text
    assert_same(data, expected)
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_an_unwritable_directory_costs_a_tokenisation_not_the_run(tmp_path, tokenizer, pairs,
                                                                   caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    indices = np.arange(len(pairs))
    with caplog.at_level(logging.WARNING):
        data, _ = tokenize_cached(pairs, tokenizer, SETTINGS, indices, str(blocked / "cache"),
                                  "train")
    assert "could not write the tokenised split" in caplog.text
    assert_same(data, tokenize_cached(pairs, tokenizer, SETTINGS, indices, None, "train")[0])


def test_prepare_data_reads_the_splits_it_wrote(tmp_path, tokenizer, monkeypatch, caplog):
    records = [{"prompt": f"cat {i}", "chosen": "red blue", "rejected": "green"}
               for i in range(40)]
    config = get_config()
    config.data.source = "generic"
    config.data.files.train = write_jsonl(tmp_path / "train.jsonl", records)
    config.data.files.test = write_jsonl(tmp_path / "test.jsonl", records[:9])
    config.data.label_noise = 0.25
    cache = str(tmp_path / "tokenized")

    # The second of two hosts writes its shares of validation and test, not the training
    # split that every host holds (process 0 writes that one).
    prepare_data(config, tokenizer, process_index=1, process_count=2, cache_dir=cache)
    assert sorted(f.split("-")[0] for f in os.listdir(cache)) == ["test", "validation"]
    first = prepare_data(config, tokenizer, cache_dir=cache)
    assert len(os.listdir(cache)) == 5  # and one host's validation and test

    monkeypatch.setattr(tokenize, "tokenize_pairs", no_tokenising)
    with caplog.at_level(logging.INFO):
        again = prepare_data(config, tokenizer, cache_dir=cache)
    assert caplog.text.count("tokenised pairs read from") == 3
    for name in first.splits:
        assert_same(again.splits[name], first.splits[name])
    assert again.stats == first.stats and again.sizes == first.sizes
    np.testing.assert_array_equal(again.flipped, first.flipped)
    assert len(first.flipped) == 10  # label noise is drawn after reading, as after tokenising
