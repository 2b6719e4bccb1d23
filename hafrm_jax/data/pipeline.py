"""From a config to tokenised train / validation / test splits, with label noise on train only.

Sources are looked up in one explicit table, `SOURCES`, that maps `data.source` to a reader of
(prompt, chosen, rejected) records per split.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import ml_collections
import numpy as np

from hafrm_jax.data import synthetic
from hafrm_jax.hf import tokenizer as hf_tokenizer
from hafrm_jax.data.batching import flip_labels
from hafrm_jax.data.records import PreferencePair
from hafrm_jax.data.tokenize import TokenizedPairs, TokenizeStats, tokenize_pairs

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def _synthetic_records(data: ml_collections.ConfigDict) -> dict[str, list[PreferencePair]]:
    return synthetic.generate_splits(data.num_train, data.num_validation, data.num_test, data.seed)


SOURCES: dict[str, Callable[[ml_collections.ConfigDict], dict[str, list[PreferencePair]]]] = {
    "synthetic": _synthetic_records,
}


def load_tokenizer(config: ml_collections.ConfigDict, pretrained_dir: str | None = None):
    """The pretrained checkpoint's tokenizer; without one, the synthetic task's own."""
    if pretrained_dir is not None:
        return hf_tokenizer.load_tokenizer(pretrained_dir)
    if config.data.source == "synthetic":
        return synthetic.build_tokenizer()
    raise ValueError(
        f"data.source={config.data.source!r} is text for a pretrained model: set "
        "model.name_or_path to a Hugging Face checkpoint directory or hub id")


@dataclasses.dataclass
class PreparedData:
    splits: dict[str, TokenizedPairs]
    stats: dict[str, TokenizeStats]
    flipped: np.ndarray  # indices of training pairs whose labels were flipped


def load_records(config: ml_collections.ConfigDict) -> dict[str, list[PreferencePair]]:
    source = config.data.source
    if source not in SOURCES:
        raise ValueError(f"unknown data.source {source!r}; available: {sorted(SOURCES)}")
    records = SOURCES[source](config.data)
    missing = [s for s in SPLITS if not records.get(s)]
    if missing:
        raise ValueError(f"data.source={source!r} produced no pairs for split(s) {missing}")
    return records


def prepare_data(config: ml_collections.ConfigDict, tokenizer) -> PreparedData:
    """Tokenise every split, then flip `data.label_noise` of the training pairs."""
    d = config.data
    splits, stats = {}, {}
    for name, pairs in load_records(config).items():
        splits[name], stats[name] = tokenize_pairs(pairs, tokenizer, d.max_length,
                                                   d.max_prompt_length, d.prompt_template)
    splits["train"], flipped = flip_labels(splits["train"], d.label_noise, d.seed)
    if len(flipped):
        log.info("label noise: flipped %d of %d training pairs", len(flipped), len(splits["train"]))
    return PreparedData(splits, stats, flipped)
