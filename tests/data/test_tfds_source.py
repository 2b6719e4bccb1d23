"""The TFDS source: a local TFDS builder of HH-format records, read through the HH reader.

Needs the [tfds] extra (tensorflow-datasets with tensorflow-cpu); CI installs it.
"""


import pytest

tfds = pytest.importorskip("tensorflow_datasets", reason="needs the [tfds] extra")
pytest.importorskip("tensorflow", reason="needs the [tfds] extra (tensorflow-cpu)")

from configs.default import get_config  # noqa: E402

from hafrm_jax.data.readers import DataError  # noqa: E402
from hafrm_jax.data.sources import read_splits  # noqa: E402

RECORDS = {
    "train": [{"chosen": f"\n\nHuman: question {i}?\n\nAssistant: good answer {i}",
               "rejected": f"\n\nHuman: question {i}?\n\nAssistant: bad answer {i}"}
              for i in range(20)],
    "test": [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant:"}]
             + [{"chosen": "\n\nHuman: bye\n\nAssistant: goodbye",
                 "rejected": "\n\nHuman: bye\n\nAssistant: go"}],
}


class HafrmTestPreferences(tfds.core.GeneratorBasedBuilder):
    """A tiny TFDS dataset in the HH-RLHF schema (chosen / rejected dialogues)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(
            {"chosen": tfds.features.Text(), "rejected": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {name: self._generate_examples(name) for name in RECORDS}

    def _generate_examples(self, split):
        for i, record in enumerate(RECORDS[split]):
            yield i, record


def config_for(tmp_path, on_error):
    config = get_config()
    config.data.source = "hh_rlhf"
    config.data.tfds.name = "hafrm_test_preferences"
    config.data.tfds.data_dir = str(tmp_path)
    config.data.on_error = on_error
    config.data.validation_fraction = 0.25
    return config


def test_tfds_split_through_the_hh_reader(tmp_path):
    results = read_splits(config_for(tmp_path, "skip").data)
    assert len(results["train"].pairs) + len(results["validation"].pairs) == 20
    assert len(results["validation"].pairs) == 5
    # the test split's first record has an empty rejected response: skipped and counted
    assert results["test"].records == 2 and results["test"].skipped == {"empty_response": 1}
    assert results["test"].pairs[0].chosen == "goodbye"
    assert results["test"].pairs[0].prompt == [{"role": "user", "content": "bye"}]


def test_tfds_bad_record_is_located(tmp_path):
    # TFDS stores examples in its own (hashed) order: the index is the position in that order
    with pytest.raises(DataError, match=r"tfds:hafrm_test_preferences\[test\]: record index \d: "
                                        r"field 'rejected': the response is empty"):
        read_splits(config_for(tmp_path, "raise").data)
