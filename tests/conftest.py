"""Shared fixtures: a tiny untied model and hand-built batches. CPU JAX, float32 throughout."""

import os

import numpy as np
import pytest

from hafrm_jax.model.config import preset

SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """Workers for `-n auto` (pyproject's addopts): one per core this process may use, at most
    4. Each worker's JAX runs its computations on a thread pool of its own, so more workers than
    that buy little and add a JAX's memory each (the suite in one process peaked at 8.2 GB
    resident; with 2 workers the machine's used memory peaked at ~11.7 GB)."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1, 4))


@pytest.fixture
def tiny_config():
    return preset("tiny", vocab_size=97, num_layers=2, hidden_size=32, intermediate_size=64,
                  num_heads=4, num_kv_heads=2, logprob_chunk=5)


def make_pair_batch(rng: np.random.Generator, pairs: int, seq: int, vocab: int,
                    prompt_len: int = 4) -> dict[str, np.ndarray]:
    """Right-padded random pairs [pairs, 2, seq] with a shared prompt and ragged responses."""
    ids = rng.integers(3, vocab, size=(pairs, 2, seq)).astype(np.int32)
    ids[:, 1, :prompt_len] = ids[:, 0, :prompt_len]
    lengths = rng.integers(prompt_len + 2, seq + 1, size=(pairs, 2))
    pos = np.arange(seq)
    attention = (pos < lengths[..., None]).astype(np.int32)
    response = attention * (pos >= prompt_len)
    ids = np.where(attention == 1, ids, 0).astype(np.int32)
    return {"input_ids": ids, "attention_mask": attention, "response_mask": response}
