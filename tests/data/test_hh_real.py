"""The HH reader and the whole tokenisation path on 1,800 real HH-RLHF pairs (../shared/data).

The tokenizer is a byte-level BPE trained here on the sample itself: offline, and as real a
subword tokenizer as a pretrained model's.
"""

import numpy as np
import pytest

from tests.helpers import CHATML, HH_FILE, hh_records
from tests.helpers import bpe_tokenizer as train_bpe

from hafrm_jax.data.batching import EpochSampler, make_batch, padding_fraction
from hafrm_jax.data.readers import read_preference_file
from hafrm_jax.data.tokenize import prompt_text, tokenize_pairs

pytestmark = pytest.mark.skipif(not HH_FILE.exists(),
                                reason=f"the real HH-RLHF sample is not present at {HH_FILE}")


@pytest.fixture(scope="module")
def raw_records():
    return hh_records()


@pytest.fixture(scope="module")
def bpe_tokenizer(raw_records):
    return train_bpe(r["chosen"] for r in raw_records)


@pytest.fixture(scope="module")
def read():
    return read_preference_file(str(HH_FILE), "hh_rlhf", on_error="skip")


def test_every_record_is_accounted_for(read, raw_records):
    assert read.records == len(raw_records) == 1800
    # The sample itself holds 4 empty chosen responses and 2 pairs whose dialogues differ
    # before the last Assistant turn: counted as bad input, never silently dropped.
    assert read.skipped == {"empty_response": 4, "prompt_mismatch": 2}
    assert len(read.pairs) == 1794


def test_prompts_end_at_the_last_assistant_turn(read, raw_records, bpe_tokenizer):
    """Rendering prompt + " " + response in the HH format gives back the original dialogue."""
    by_chosen = {r["chosen"]: r for r in raw_records}
    rebuilt = 0
    for pair in read.pairs:
        assert pair.prompt[-1]["role"] == "user"
        text = prompt_text(pair.prompt, bpe_tokenizer, "hh")
        assert text.endswith("\n\nAssistant:")
        rebuilt += (text + " " + pair.chosen) in by_chosen
    assert rebuilt >= 0.99 * len(read.pairs), rebuilt


@pytest.mark.parametrize("chat_format", ["hh", "tokenizer"])
def test_tokenisation_masks_every_response_token(read, bpe_tokenizer, chat_format):
    tokenizer = bpe_tokenizer
    tokenizer.chat_template = CHATML if chat_format == "tokenizer" else None
    data, stats = tokenize_pairs(read.pairs, tokenizer, 512, 128, chat_format)
    assert stats.identical_dropped == 0 and stats.pairs_out == len(data) == len(read.pairs)
    prefix = " " if chat_format == "hh" else ""
    batch = make_batch(data, np.arange(len(data)), 64)
    checked = 0
    for i, pair in enumerate(read.pairs):
        for side, text in enumerate((pair.chosen, pair.rejected)):
            n = len(tokenizer(prefix + text, add_special_tokens=False)["input_ids"]) + 1  # + EOS
            if data.prompt_lengths[i] + n <= 512:  # not truncated: all of it is scored
                assert batch["response_mask"][i, side].sum() == n
                last = data.lengths[i, side] - 1
                assert data.tokens[i, side, last] == tokenizer.eos_token_id
                checked += 1
    assert checked > 0.9 * 2 * len(data)
    no_bucket = EpochSampler(len(data), 16, 0)
    bucketed = EpochSampler(len(data), 16, 0, data.lengths.max(axis=1), bucket_batches=50)
    print(f"\n[{chat_format}] {len(data)} pairs; prompts truncated {stats.prompts_truncated}, "
          f"responses truncated {stats.responses_truncated}; mean tokens "
          f"{data.lengths.mean():.0f}; padding at 16 pairs/batch: "
          f"{padding_fraction(data, no_bucket, 64):.1%} shuffled, "
          f"{padding_fraction(data, bucketed, 64):.1%} bucketed")
    assert padding_fraction(data, bucketed, 64) < padding_fraction(data, no_bucket, 64)


def test_single_turn_filter(bpe_tokenizer):
    single = read_preference_file(str(HH_FILE), "hh_rlhf", on_error="skip", single_turn=True)
    assert all(len(p.prompt) == 1 for p in single.pairs)
    assert single.records == 1800 and len(single.pairs) + sum(single.filtered.values()) + sum(
        single.skipped.values()) == 1800
