"""Where preference records come from: local files, Hugging Face hub datasets, or TFDS.

Each source yields records of one of the reader formats in `hafrm_jax.data.readers`; the split
names map to train / validation / test. Where a source has no validation split, one is held
out of train (`data.validation_fraction`), so that model selection never sees the test split.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections
import numpy as np

from hafrm_jax.configuration import ConfigError
from hafrm_jax.data.readers import (DataError, ReadResult, RecordError, merge_results,
                                    read_preference_file, read_preference_records)

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


def _paths(spec: str, split: str) -> list[str]:
    """Comma-separated paths or glob patterns -> the files, each pattern required to match."""
    paths = []
    for pattern in (p.strip() for p in spec.split(",") if p.strip()):
        matched = sorted(glob.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"data.files.{split}: no file matches {pattern!r}")
        paths += matched
    return paths


def _decoded(value: Any) -> Any:
    """TFDS yields bytes and numpy arrays: turn them into the str / list / dict of JSON."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_decoded(v) for v in value.tolist()] if value.dtype == object else value.tolist()
    if isinstance(value, Mapping):
        return {k: _decoded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_decoded(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _hub_parts(data: ml_collections.ConfigDict, split: str) -> list[tuple[str, Iterable]]:
    """(where, records) of each `data.hub.data_dir` part (e.g. HH-RLHF's
    "helpful-base,harmless-base"), so that a bad record is located in its part."""
    try:
        import datasets
    except ImportError as e:
        raise ImportError("data.hub needs the `datasets` package: pip install datasets") from e
    data_dirs = [d.strip() for d in (data.hub.data_dir or "").split(",") if d.strip()] or [None]
    return [(f"hub:{data.hub.path}{'/' + d if d else ''}[{split}]",
             datasets.load_dataset(data.hub.path, name=data.hub.name, data_dir=d, split=split))
            for d in data_dirs]


def _tfds_records(data: ml_collections.ConfigDict, split: str) -> Iterable[Mapping]:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("data.tfds needs TensorFlow Datasets: pip install 'hafrm-jax[tfds]'") \
            from e
    builder = tfds.builder(data.tfds.name, data_dir=data.tfds.data_dir)
    builder.download_and_prepare()
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    return (_decoded(r) for r in tfds.as_numpy(dataset))


def _configured_source(data: ml_collections.ConfigDict) -> str:
    chosen = [name for name, on in (("files", any(data.files[s] for s in SPLITS)),
                                    ("hub", bool(data.hub.path)),
                                    ("tfds", bool(data.tfds.name))) if on]
    if len(chosen) != 1:
        raise ConfigError(f"data.source={data.source!r} needs exactly one of data.files.*, "
                          f"data.hub.path or data.tfds.name; got {chosen or 'none'}")
    return chosen[0]


def reader_options(data: ml_collections.ConfigDict) -> dict[str, Any]:
    """`data.options` as plain dicts all the way down (a nested ConfigDict, such as generic's
    `columns`, is no Mapping to the readers' checks)."""
    if isinstance(data.options, ml_collections.ConfigDict):
        return data.options.to_dict()
    return dict(data.options or {})


def read_split(data: ml_collections.ConfigDict, split: str) -> ReadResult | None:
    """The records of one split from the configured source; None where it has no such split."""
    kind = _configured_source(data)
    common = dict(format=data.source, on_error=data.on_error, **reader_options(data))
    if kind == "files":
        if not data.files[split]:
            return None
        return read_preference_file(_paths(data.files[split], split), **common)
    name = data.splits[split]
    if not name:
        return None
    if kind == "hub":
        return merge_results([read_preference_records(records, where, **common)
                        for where, records in _hub_parts(data, name)])
    return read_preference_records(_tfds_records(data, name), f"tfds:{data.tfds.name}[{name}]",
                                   **common)


def _split_source(data: ml_collections.ConfigDict, split: str) -> str:
    """Where a split's records come from, as the config keys that say so."""
    kind = _configured_source(data)
    if kind == "files":
        return f"data.files.{split}={data.files[split]!r}"
    where = (f"data.hub.path={data.hub.path!r}" if kind == "hub"
             else f"data.tfds.name={data.tfds.name!r}")
    return f"{where}, data.splits.{split}={data.splits[split]!r}"


def _check_not_empty(data: ml_collections.ConfigDict, split: str, result: ReadResult) -> None:
    """A configured split that gave no pair at all (an empty file, every record skipped or
    filtered) is a DataError naming the source and where its records went, rather than a
    confusing failure further on (an empty hold-out, a split smaller than the hosts)."""
    if result.pairs:
        return
    fates = [f"{result.records} records read"]
    if result.skipped:
        fates.append(f"skipped as bad input {dict(sorted(result.skipped.items()))}")
    if result.filtered:
        fates.append(f"filtered {dict(sorted(result.filtered.items()))}")
    raise DataError(_split_source(data, split),
                    RecordError("no_pairs", f"no preference pairs ({'; '.join(fates)})"))


def hold_out(result: ReadResult, fraction: float, seed: int, key: str = "data.validation_fraction"
             ) -> tuple[ReadResult, ReadResult]:
    """Split train into (kept, held out), the held-out share (`fraction`, set by config `key`)
    drawn from `seed`."""
    count = len(result.pairs)
    held = int(round(fraction * count))
    if held == 0 or held == count:
        raise ConfigError(f"{key}={fraction} of {count} training pairs leaves an empty split")
    order = np.random.default_rng((seed, 7)).permutation(count)
    validation = {int(i) for i in order[:held]}
    pick = lambda keep: [p for i, p in enumerate(result.pairs) if (i in validation) != keep]
    return (ReadResult(pick(True), result.records, result.skipped, result.filtered),
            ReadResult(pick(False), held, {}, {}))


def drop_duplicates(result: ReadResult) -> ReadResult:
    """Each exact duplicate pair (same prompt, chosen and rejected) kept once; the others are
    counted as filtered "duplicate". A hold-out draws by position, so a repeated pair would
    otherwise land in train and in validation or test."""
    seen, pairs = set(), []
    for pair in result.pairs:
        key = json.dumps([pair.prompt, pair.chosen, pair.rejected])
        if key not in seen:
            seen.add(key)
            pairs.append(pair)
    if len(pairs) == len(result.pairs):
        return result
    filtered = {**result.filtered, "duplicate": result.filtered.get("duplicate", 0)
                + len(result.pairs) - len(pairs)}
    return ReadResult(pairs, result.records, result.skipped, filtered)


def read_splits(data: ml_collections.ConfigDict) -> dict[str, ReadResult]:
    """train / validation / test from the configured source, logged with their counts.

    A missing test split is held out of train first (`data.test_fraction`), then a missing
    validation split (`data.validation_fraction`): the three are always disjoint.
    """
    results = {split: read_split(data, split) for split in SPLITS}
    results = {split: r if r is None else drop_duplicates(r) for split, r in results.items()}
    for split, result in results.items():
        if result is not None:
            _check_not_empty(data, split, result)
    if results["train"] is None:
        raise ConfigError(f"data.source={data.source!r}: no train split is configured")
    if results["test"] is None:
        if not data.test_fraction:
            raise ConfigError(f"data.source={data.source!r} has no test split: configure one, "
                              "or hold one out of train with data.test_fraction")
        results["train"], results["test"] = hold_out(results["train"], data.test_fraction,
                                                     data.seed + 1, "data.test_fraction")
        log.info("test: %d pairs held out of train (data.test_fraction=%s)",
                 len(results["test"].pairs), data.test_fraction)
    if results["validation"] is None:
        results["train"], results["validation"] = hold_out(
            results["train"], data.validation_fraction, data.seed)
        log.info("validation: %d pairs held out of train (data.validation_fraction=%s)",
                 len(results["validation"].pairs), data.validation_fraction)
    for split, result in results.items():
        log.info("%s: %d pairs from %d records; skipped %s; filtered %s", split,
                 len(result.pairs), result.records, result.skipped or "none",
                 result.filtered or "none")
    return results
