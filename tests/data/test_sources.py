"""Sources: local files (globs), the hub (a stand-in `datasets` module), split hold-outs."""

import sys
import types

import numpy as np
import pytest

from configs.default import get_config

from hafrm_jax.configuration import ConfigError
from hafrm_jax.data.pipeline import load_records
from hafrm_jax.data.readers import DataError
from hafrm_jax.data.sources import read_splits
from tests.helpers import write_jsonl


def hh(i, good="yes"):
    return {"chosen": f"\n\nHuman: q{i}\n\nAssistant: {good} {i}",
            "rejected": f"\n\nHuman: q{i}\n\nAssistant: no {i}"}


def hh_config(**files):
    config = get_config()
    config.data.source = "hh_rlhf"
    for split, spec in files.items():
        config.data.files[split] = spec
    return config


def test_files_with_globs_and_held_out_validation(tmp_path):
    write_jsonl(tmp_path / "a.train.jsonl", [hh(i) for i in range(30)])
    write_jsonl(tmp_path / "b.train.jsonl", [hh(i) for i in range(30, 40)])
    test = write_jsonl(tmp_path / "test.jsonl", [hh(i) for i in range(100, 105)])
    config = hh_config(train=str(tmp_path / "*.train.jsonl"), test=test)
    config.data.validation_fraction = 0.25
    results = read_splits(config.data)
    train = {p.chosen for p in results["train"].pairs}
    validation = {p.chosen for p in results["validation"].pairs}
    assert len(train) == 30 and len(validation) == 10 and not train & validation
    again = read_splits(config.data)  # deterministic from data.seed
    assert [p.chosen for p in again["validation"].pairs] == [p.chosen for p in
                                                            results["validation"].pairs]


def test_renamed_generic_columns_set_in_the_config(tmp_path):
    """data.options.columns as a recipe or a --config.data.options={...} override sets it: a
    ConfigDict, whose nested mapping the reader must take."""
    import ml_collections

    rows = [{"question": f"q{i}", "good": f"yes {i}", "bad": f"no {i}"} for i in range(6)]
    config = get_config()
    config.data.source = "generic"
    config.data.files.train = write_jsonl(tmp_path / "train.jsonl", rows)
    config.data.files.validation = config.data.files.test = config.data.files.train
    config.data.options = ml_collections.ConfigDict(
        {"columns": {"prompt": "question", "chosen": "good", "rejected": "bad"}})
    pair = read_splits(config.data)["train"].pairs[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == ("q0", "yes 0", "no 0")


def test_test_split_held_out_when_missing_then_validation(tmp_path):
    config = hh_config(train=write_jsonl(tmp_path / "all.jsonl", [hh(i) for i in range(100)]))
    with pytest.raises(ConfigError, match="data.test_fraction"):
        read_splits(config.data)
    config.data.test_fraction = 0.001  # the key at fault is named, not validation's
    with pytest.raises(ConfigError, match=r"data.test_fraction=0.001 of 100 training pairs"):
        read_splits(config.data)
    config.data.test_fraction, config.data.validation_fraction = 0.1, 0.1
    results = read_splits(config.data)
    sizes = {s: len(r.pairs) for s, r in results.items()}
    assert sizes == {"train": 81, "validation": 9, "test": 10}
    seen = [p.chosen for r in results.values() for p in r.pairs]
    assert len(set(seen)) == 100


def test_duplicate_pairs_are_kept_once_and_counted_before_the_hold_out(tmp_path):
    """Repeated pairs would otherwise land in train and validation both."""
    config = hh_config(train=write_jsonl(tmp_path / "all.jsonl", [hh(i) for i in range(10)] * 5),
                       test=write_jsonl(tmp_path / "test.jsonl", [hh(100), hh(100), hh(101)]))
    config.data.validation_fraction = 0.2
    results = read_splits(config.data)
    train = {p.chosen for p in results["train"].pairs}
    validation = {p.chosen for p in results["validation"].pairs}
    assert len(train) + len(validation) == 10 and not train & validation
    assert results["train"].filtered == {"duplicate": 40} and results["train"].records == 50
    assert len(results["test"].pairs) == 2 and results["test"].filtered == {"duplicate": 1}


def test_label_noise_counts_only_the_pairs_it_flipped(tmp_path):
    """A pair drawn for flipping but dropped as identical after truncation flips nothing."""
    from hafrm_jax.data import synthetic
    from hafrm_jax.data.pipeline import prepare_data

    records = [{"prompt": f"cat {i}", "chosen": "red", "rejected": "blue"} for i in range(8)]
    records += [{"prompt": f"dog {i}", "chosen": "red blue one", "rejected": "red blue two"}
                for i in range(4)]  # identical once cut to two response tokens
    config = get_config()
    config.data.source = "generic"
    config.data.files.train = write_jsonl(tmp_path / "train.jsonl", records)
    config.data.files.test = write_jsonl(tmp_path / "test.jsonl", records[:2])
    config.data.files.validation = write_jsonl(tmp_path / "validation.jsonl", records[:2])
    config.data.max_length, config.data.max_prompt_length = 5, 2
    config.data.label_noise = 1.0
    data = prepare_data(config, synthetic.build_tokenizer())
    assert data.sizes["train"] == 12 and len(data.splits["train"]) == 8
    np.testing.assert_array_equal(data.flipped, np.arange(8))


def test_a_chat_format_the_tokenizer_cannot_give_is_a_config_error(tmp_path):
    from tests.helpers import bpe_tokenizer

    from hafrm_jax.data.pipeline import prepare_data

    config = hh_config(train=write_jsonl(tmp_path / "t.jsonl", [hh(i) for i in range(8)]))
    config.data.chat_format = "tokenizer"
    tokenizer = bpe_tokenizer([hh(0)["chosen"]])  # no chat template
    with pytest.raises(ConfigError, match="data.chat_format='tokenizer' but the tokenizer"):
        prepare_data(config, tokenizer)


def test_max_train_pairs_and_missing_files(tmp_path):
    config = hh_config(train=write_jsonl(tmp_path / "t.jsonl", [hh(i) for i in range(50)]),
                       test=write_jsonl(tmp_path / "s.jsonl", [hh(i) for i in range(5)]))
    config.data.max_train_pairs = 8
    pairs, counts = load_records(config)
    assert len(pairs["train"]) == 8 and counts["test"]["records"] == 5
    config.data.files.test = str(tmp_path / "missing-*.jsonl")
    with pytest.raises(FileNotFoundError, match="data.files.test"):
        load_records(config)


def test_a_split_without_pairs_names_its_source_and_where_the_records_went(tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [hh(i) for i in range(20)])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")  # blank lines are no records
    config = hh_config(train=train, test=str(empty))
    with pytest.raises(DataError, match=rf"^data.files.test='{empty}': no preference pairs "
                                        r"\(0 records read\)$"):
        read_splits(config.data)
    # Every record skipped as bad input, or filtered: counted in the message.
    config.data.files.test = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": 1}] * 3)
    config.data.on_error = "skip"
    with pytest.raises(DataError, match=r"no preference pairs \(3 records read; skipped as bad "
                                        r"input \{'wrong_type': 3\}\)"):
        read_splits(config.data)
    two_turns = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: "
    config.data.files.test = write_jsonl(tmp_path / "multi.jsonl", [
        {"chosen": two_turns + "yes", "rejected": two_turns + "no"}, {"chosen": 2}])
    config.data.options = {"single_turn": True}
    with pytest.raises(DataError, match=r"\(2 records read; skipped as bad input "
                                        r"\{'wrong_type': 1\}; filtered \{'multi_turn': 1\}\)"):
        read_splits(config.data)


def test_exactly_one_kind_of_source(tmp_path):
    config = hh_config()
    with pytest.raises(ValueError, match="exactly one of"):
        read_splits(config.data)
    config.data.files.train = "x.jsonl"
    config.data.hub.path = "Anthropic/hh-rlhf"
    with pytest.raises(ValueError, match="exactly one of"):
        read_splits(config.data)


def test_hub_source_loads_each_data_dir(monkeypatch):
    calls = []

    def load_dataset(path, name=None, data_dir=None, split=None):
        calls.append((path, data_dir, split))
        return [hh(f"{data_dir}-{split}-{i}") for i in range(10)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    config = hh_config()
    config.data.hub.path = "Anthropic/hh-rlhf"
    config.data.hub.data_dir = "helpful-base,harmless-base"
    config.data.validation_fraction = 0.1
    results = read_splits(config.data)
    assert ("Anthropic/hh-rlhf", "harmless-base", "test") in calls
    assert len(results["test"].pairs) == 20
    assert len(results["train"].pairs) + len(results["validation"].pairs) == 20
    assert results["test"].records == 20

    def with_a_bad_record(path, name=None, data_dir=None, split=None):
        rows = [hh(f"{data_dir}-{split}-{i}") for i in range(3)]
        if data_dir == "harmless-base":
            rows[1] = {**rows[1], "chosen": 7}
        return rows

    monkeypatch.setitem(sys.modules, "datasets",
                        types.SimpleNamespace(load_dataset=with_a_bad_record))
    with pytest.raises(ValueError, match=r"hub:Anthropic/hh-rlhf/harmless-base\[train\]: "
                                         r"record index 1: field 'chosen'"):
        read_splits(config.data)
