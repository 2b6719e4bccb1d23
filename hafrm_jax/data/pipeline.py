"""From a config to tokenised train / validation / test splits, with label noise on train only.

`data.source` names the record format: "synthetic" (the built-in task) or one of the readers
in `hafrm_jax.data.readers` ("hh_rlhf", "beaver", "alpaca_farm", "chatbot_arena", "generic"),
whose records come from local files, the Hugging Face hub or TFDS (`hafrm_jax.data.sources`).
"""

from __future__ import annotations

import dataclasses
import logging

import ml_collections
import numpy as np

from hafrm_jax.configuration import ConfigError
from hafrm_jax.data import synthetic
from hafrm_jax.data.batching import flip_labels
from hafrm_jax.data.readers import READERS
from hafrm_jax.data.records import PreferencePair, prompt_format
from hafrm_jax.data.sources import SPLITS, read_splits
from hafrm_jax.data.token_cache import TokenizeSettings, tokenize_cached, tokenizer_digest
from hafrm_jax.data.tokenize import TokenizedPairs, TokenizeStats, resolved_chat_format
from hafrm_jax.hf import tokenizer as hf_tokenizer

log = logging.getLogger(__name__)

SOURCES = ("synthetic",) + tuple(READERS)


def load_tokenizer(config: ml_collections.ConfigDict, pretrained_dir: str | None = None):
    """The pretrained checkpoint's tokenizer; without one, the synthetic task's own."""
    if pretrained_dir is not None:
        return hf_tokenizer.load_tokenizer(pretrained_dir)
    if config.data.source == "synthetic":
        return synthetic.build_tokenizer()
    raise ConfigError(
        f"data.source={config.data.source!r} is text for a pretrained model: set "
        "model.name_or_path to a Hugging Face checkpoint directory or hub id")


def host_share(num_pairs: int, process_index: int, process_count: int) -> np.ndarray:
    """Split positions of host `process_index`'s share: every `process_count`-th pair."""
    return np.arange(process_index, num_pairs, process_count)


@dataclasses.dataclass
class PreparedData:
    """The whole training split on every host (so that a step's batch is the same whatever
    the number of hosts), and this host's share of validation and test (all of them on one
    host), tokenised."""

    splits: dict[str, TokenizedPairs]
    sizes: dict[str, int]  # pairs per split over all hosts, before tokenisation
    stats: dict[str, TokenizeStats]  # of the training split, and of this host's eval shares
    flipped: np.ndarray  # split positions of the training pairs whose labels were flipped
    # (drawn over the split; a drawn pair dropped as identical flips nothing)
    read_counts: dict[str, dict]  # per split: records read, skipped (bad input), filtered
    prompt_format: str  # the training prompts: "turns", "text" or "mixed"


def load_records(config: ml_collections.ConfigDict
                 ) -> tuple[dict[str, list[PreferencePair]], dict[str, dict]]:
    """Pairs per split, and per split the counts of what was read, skipped and filtered."""
    d = config.data
    if d.source not in SOURCES:
        raise ConfigError(f"unknown data.source {d.source!r}; available: {list(SOURCES)}")
    if d.source == "synthetic":
        pairs = synthetic.generate_splits(d.num_train, d.num_validation, d.num_test, d.seed)
        return pairs, {s: {"records": len(p), "skipped": {}, "filtered": {}}
                       for s, p in pairs.items()}
    results = read_splits(d)
    pairs = {s: r.pairs for s, r in results.items()}
    for split, limit, salt in (("train", d.max_train_pairs, 11),
                               ("validation", d.max_eval_pairs, 12),
                               ("test", d.max_eval_pairs, 13)):
        if limit and len(pairs[split]) > limit:
            keep = np.sort(np.random.default_rng((d.seed, salt)).choice(
                len(pairs[split]), limit, replace=False))
            pairs[split] = [pairs[split][i] for i in keep]
            log.info("%s: a fixed random subset of %d pairs (smoke-run limit)", split, limit)
    counts = {s: {"records": r.records, "skipped": r.skipped, "filtered": r.filtered}
              for s, r in results.items()}
    return pairs, counts


def prepare_data(config: ml_collections.ConfigDict, tokenizer, process_index: int = 0,
                 process_count: int = 1, cache_dir: str | None = None) -> PreparedData:
    """Tokenise the training split, and this host's share of validation and test (pairs
    process_index, + process_count, ...), then flip `data.label_noise` of the training pairs.
    With `cache_dir`, splits tokenised before for the same pairs, tokenizer and settings are
    read from there, and new ones written there (`hafrm_jax.data.token_cache`; the training
    split by process 0 only, as every host's is the same).

    Every host holds the whole training split: a step's global batch is drawn over the split
    (`EpochSampler`) and each host makes its rows of it, so that the batches, and a resumed
    run's data order, do not depend on the number of hosts. Evaluation scores shares and
    gathers the scores, which does not depend on it either.
    """
    d = config.data
    try:
        resolved_chat_format(tokenizer, d.chat_format)
    except ValueError as e:  # a chat format this tokenizer cannot give
        raise ConfigError(f"data.{e}") from None
    records, counts = load_records(config)
    settings = TokenizeSettings(d.max_length, d.max_prompt_length, d.chat_format,
                                d.prompt_template)
    tokenizer_key = tokenizer_digest(tokenizer) if cache_dir else None
    splits, stats = {}, {}
    for name in SPLITS:
        pairs = records[name]
        if len(pairs) < process_count:
            raise ConfigError(f"data.source={d.source!r}: the {name} split has {len(pairs)} "
                              f"pairs, fewer than the {process_count} hosts")
        share = (np.arange(len(pairs)) if name == "train"
                 else host_share(len(pairs), process_index, process_count))
        splits[name], stats[name] = tokenize_cached(
            [pairs[i] for i in share], tokenizer, settings, share, cache_dir, name,
            write=name != "train" or process_index == 0, tokenizer_key=tokenizer_key)
        s = stats[name]
        log.info("%s: %d pairs tokenised (%d prompts and %d responses truncated, %d identical "
                 "pairs dropped)", name, s.pairs_out, s.prompts_truncated, s.responses_truncated,
                 s.identical_dropped)
    sizes = {name: len(records[name]) for name in SPLITS}
    splits["train"], drawn = flip_labels(splits["train"], d.label_noise, d.seed, sizes["train"])
    flipped = drawn[np.isin(drawn, splits["train"].index)]
    if len(drawn):
        log.info("label noise: flipped %d of the %d training pairs (%d drawn over the split's "
                 "%d, before identical pairs were dropped)", len(flipped), len(splits["train"]),
                 len(drawn), sizes["train"])
    return PreparedData(splits, sizes, stats, flipped, counts, prompt_format(records["train"]))
