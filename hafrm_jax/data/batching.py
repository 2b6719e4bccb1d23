"""Batches from `TokenizedPairs`: deterministic epoch shuffling, padding buckets, label noise.

A training batch is a pure function of (seed, step): the order of epoch e is a permutation drawn
from (seed, e), so resuming needs nothing but the step, and every run with a seed is repeatable.
Batches are padded to a multiple of `pad_to_multiple` (bounding the number of compiled shapes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from hafrm_jax.data.tokenize import TokenizedPairs

Batch = dict[str, np.ndarray]


def padded_length(lengths: np.ndarray, multiple: int, max_length: int) -> int:
    """Longest sequence of the batch, rounded up to `multiple`, at most `max_length`."""
    longest = int(lengths.max())
    return min(max_length, -(-longest // multiple) * multiple)


def make_batch(data: TokenizedPairs, indices: np.ndarray, pad_to_multiple: int) -> Batch:
    """The pairs at `indices` as model inputs, each [pairs, 2, seq] (ref_logps [pairs, 2])."""
    lengths = data.lengths[indices]  # [pairs, 2]
    seq = padded_length(lengths, pad_to_multiple, data.tokens.shape[-1])
    positions = np.arange(seq)
    attention = positions < lengths[..., None]
    response = attention & (positions >= data.prompt_lengths[indices][:, None, None])
    batch = {
        "input_ids": data.tokens[indices, :, :seq],
        "attention_mask": attention.astype(np.int32),
        "response_mask": response.astype(np.int32),
    }
    if data.ref_logps is not None:
        batch["ref_logps"] = data.ref_logps[indices].astype(np.float32)
    return batch


@dataclasses.dataclass(frozen=True)
class EpochSampler:
    """Which pairs make up training batch `step`: shuffled per epoch, incomplete tails dropped."""

    num_pairs: int
    batch_size: int
    seed: int

    def __post_init__(self):
        if self.num_pairs < self.batch_size:
            raise ValueError(f"the training split has {self.num_pairs} pairs, fewer than one "
                             f"batch of {self.batch_size}")

    @property
    def batches_per_epoch(self) -> int:
        return self.num_pairs // self.batch_size

    def position(self, step: int) -> dict[str, int]:
        """Where batch `step` lies in the data: its epoch and its index within the epoch."""
        epoch, index = divmod(step, self.batches_per_epoch)
        return {"epoch": epoch, "batch_in_epoch": index}

    def indices(self, step: int) -> np.ndarray:
        pos = self.position(step)
        order = np.random.default_rng((self.seed, pos["epoch"])).permutation(self.num_pairs)
        start = pos["batch_in_epoch"] * self.batch_size
        return order[start:start + self.batch_size]


def eval_batches(data: TokenizedPairs, batch_size: int,
                 pad_to_multiple: int) -> Iterator[tuple[Batch, int]]:
    """Every pair once, in order, as (batch, number of real pairs). The last batch is filled up
    with copies of its final pair so that all batches share one shape; drop rows past the count."""
    for start in range(0, len(data), batch_size):
        indices = np.arange(start, min(start + batch_size, len(data)))
        real = len(indices)
        if real < batch_size:
            indices = np.concatenate([indices, np.full(batch_size - real, indices[-1])])
        yield make_batch(data, indices, pad_to_multiple), real


def flip_labels(data: TokenizedPairs, rate: float, seed: int) -> tuple[TokenizedPairs, np.ndarray]:
    """Swap chosen and rejected in round(rate * pairs) pairs drawn from `seed`: label noise."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {rate}")
    count = int(round(rate * len(data)))
    flipped = np.sort(np.random.default_rng(seed).choice(len(data), size=count, replace=False))
    return data.with_swapped(flipped), flipped
