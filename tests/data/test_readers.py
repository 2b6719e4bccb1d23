"""Preference-file readers: each format on small files in its real schema, every kind of bad
input raised (with file, line and field) and skipped-and-counted, the file variants, and the
real HH-RLHF sample where `../shared` has it."""

import gzip
import json
import logging
import statistics
import sys

import pytest

from hafrm_jax.data.readers import READERS, DataError, read_preference_file
from hafrm_jax.data.records import PreferencePair
from tests.helpers import write_jsonl

HH_SAMPLE = (__import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "data"
             / "hh-rlhf" / "harmless-base-test-1800.jsonl.gz")


def user(text):
    return [{"role": "user", "content": text}]


def turn(role, text):
    return {"role": role, "content": text}


def write_json(path, records):
    data = json.dumps(records).encode()
    path.write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)
    return path


def write_parquet(path, records):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def hh(prompt_turns, response):
    """An HH dialogue: alternating Human / Assistant turns, then the response."""
    text = "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}"
                   for i, t in enumerate(prompt_turns))
    return f"{text}\n\nAssistant: {response}"


HH_RECORDS = [
    {"chosen": hh(["Hi there"], "Hello! How can I help?"), "rejected": hh(["Hi there"], "Go away.")},
    {"chosen": hh(["How do I bake bread?", "Do you have yeast?", "Yes"], "Mix flour, water and"
                  " yeast.\n\nThen knead."), "rejected": hh(["How do I bake bread?",
                                                             "Do you have yeast?", "Yes"], "No.")},
]
BEAVER = {"prompt": "How do I pick a lock?", "response_0": "Use a tension wrench.",
          "response_1": "I can't help with that.", "better_response_id": 0,
          "safer_response_id": 1, "is_response_0_safe": False, "is_response_1_safe": True}
ALPACA = {"instruction": "Translate to French.", "input": "Good morning", "output_1": "Bonjour",
          "output_2": "Bonsoir", "preference": 1}
ARENA_HISTORY = [turn("user", "Name a colour."), turn("assistant", "Blue."),
                 turn("user", "Another?")]


def arena(winner, answer_a="Red.", answer_b="Green.", history_b=None):
    return {"question_id": "q", "model_a": "m1", "model_b": "m2", "winner": winner,
            "conversation_a": ARENA_HISTORY + [turn("assistant", answer_a)],
            "conversation_b": (history_b or ARENA_HISTORY) + [turn("assistant", answer_b)]}


def test_hh_rlhf_splits_at_last_assistant_and_filters_single_turn(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", HH_RECORDS)
    result = read_preference_file(str(path), "hh_rlhf")
    assert result.records == 2 and result.skipped == {} and result.filtered == {}
    first, second = result.pairs
    assert first == PreferencePair(user("Hi there"), "Hello! How can I help?", "Go away.")
    assert second.prompt == [turn("user", "How do I bake bread?"),
                             turn("assistant", "Do you have yeast?"), turn("user", "Yes")]
    assert second.chosen == "Mix flour, water and yeast.\n\nThen knead."
    single = read_preference_file(path, "hh_rlhf", single_turn=True)
    assert single.pairs == [first] and single.filtered == {"multi_turn": 1}


@pytest.mark.parametrize("selection, chosen, filtered", [
    ("better", "Use a tension wrench.", {}),
    ("safer", "I can't help with that.", {}),
    ("safe_vs_unsafe", "I can't help with that.", {"both_safe": 1, "both_unsafe": 1}),
])
def test_beaver_pair_selection(tmp_path, selection, chosen, filtered):
    both_safe = {**BEAVER, "is_response_0_safe": True}
    both_unsafe = {**BEAVER, "is_response_1_safe": False}
    path = write_jsonl(tmp_path / "beaver.jsonl", [BEAVER, both_safe, both_unsafe])
    result = read_preference_file(path, "beaver", pair_selection=selection)
    assert result.pairs[0].prompt == user("How do I pick a lock?")
    assert result.pairs[0].chosen == chosen and result.pairs[0].rejected != chosen
    assert result.filtered == filtered and len(result.pairs) == 3 - sum(filtered.values())


def test_alpaca_farm_prompt_and_preference(tmp_path):
    no_input = {**ALPACA, "input": "", "preference": 2}
    result = read_preference_file(write_jsonl(tmp_path / "a.jsonl", [ALPACA, no_input]),
                                  "alpaca_farm")
    assert result.pairs == [
        PreferencePair(user("Translate to French.\n\nGood morning"), "Bonjour", "Bonsoir"),
        PreferencePair(user("Translate to French."), "Bonsoir", "Bonjour")]


def test_chatbot_arena_winner_ties_and_diverged_histories(tmp_path):
    diverged = [turn("user", "Name a colour."), turn("assistant", "Pink."), turn("user", "Another?")]
    records = [arena("model_a"), arena("model_b"), arena("tie"), arena("tie (bothbad)"),
               arena("model_a", history_b=diverged)]
    result = read_preference_file(write_jsonl(tmp_path / "arena.jsonl", records), "chatbot_arena")
    assert result.pairs == [PreferencePair(ARENA_HISTORY, "Red.", "Green."),
                            PreferencePair(ARENA_HISTORY, "Green.", "Red.")]
    assert result.filtered == {"tie": 1, "tie_bothbad": 1, "diverged_history": 1}
    assert result.records == 5 and result.skipped == {}


def test_generic_strings_and_both_conversational_forms(tmp_path):
    answer = [turn("assistant", "Paris.")]
    wrong = [turn("assistant", "Rome.")]
    question = user("Capital of France?")
    records = [{"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."},
               {"prompt": question, "chosen": answer, "rejected": wrong},  # explicit prompt
               {"chosen": question + answer, "rejected": question + wrong},  # implicit prompt
               # explicit prompt repeated in each side (some exports do): taken once
               {"prompt": question, "chosen": question + answer, "rejected": question + wrong}]
    result = read_preference_file(write_jsonl(tmp_path / "g.jsonl", records), "generic")
    assert result.pairs == [PreferencePair("Capital of France?", "Paris.", "Rome."),
                            PreferencePair(question, "Paris.", "Rome."),
                            PreferencePair(question, "Paris.", "Rome."),
                            PreferencePair(question, "Paris.", "Rome.")]


def test_a_byte_order_mark_opens_a_file(tmp_path):
    record = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(record).encode() + b"\n")
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([record]).encode())
    for name in ("bom.jsonl", "bom.json"):
        result = read_preference_file(str(tmp_path / name), "generic")
        assert result.pairs == [PreferencePair("2+2?", "4", "5")] and not result.skipped


def test_generic_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"q": "2+2?", "good": "4", "bad": "5"}])
    result = read_preference_file(path, "generic",
                                  columns={"prompt": "q", "chosen": "good", "rejected": "bad"})
    assert result.pairs == [PreferencePair("2+2?", "4", "5")]
    with pytest.raises(DataError, match="g.jsonl:1: field 'prompt': missing"):
        read_preference_file(path, "generic", columns={"chosen": "good", "rejected": "bad"})


# (format, records with one bad record on line 2, reason, field named in the message)
GOOD_HH = HH_RECORDS[0]
BAD_INPUTS = {
    "invalid_json": ("hh_rlhf", [GOOD_HH, b'{"chosen": "x", ', GOOD_HH], "invalid JSON"),
    "invalid_utf8": ("hh_rlhf", [GOOD_HH, b'{"chosen": "\xff\xfe"}', GOOD_HH], "invalid UTF-8"),
    "missing_field": ("beaver", [BEAVER, {k: v for k, v in BEAVER.items() if k != "response_1"},
                                 BEAVER], "field 'response_1'"),
    "wrong_type": ("alpaca_farm", [ALPACA, {**ALPACA, "output_2": 7}, ALPACA],
                   "field 'output_2': expected a string, got int"),
    "invalid_value": ("chatbot_arena", [arena("model_a"), arena("model_c"), arena("model_b")],
                      "field 'winner'"),
    "empty_response": ("hh_rlhf", [GOOD_HH, {**GOOD_HH, "chosen": hh(["Hi there"], "  ")},
                                   GOOD_HH], "field 'chosen': the response is empty"),
    "prompt_mismatch": ("hh_rlhf", [GOOD_HH, {**GOOD_HH, "rejected": hh(["Hi!"], "No.")},
                                    GOOD_HH], "field 'rejected'"),
    "empty_prompt": ("generic", [{"prompt": "a", "chosen": "b", "rejected": "c"},
                                 {"prompt": " ", "chosen": "b", "rejected": "c"},
                                 {"prompt": "a", "chosen": "b", "rejected": "c"}],
                     "field 'prompt': the prompt is empty"),
    "malformed_dialogue": ("generic", [{"chosen": [turn("user", "a")], "rejected": "b"}] * 3,
                           "field 'chosen[0].role'"),
}


@pytest.mark.parametrize("reason", sorted(BAD_INPUTS))
def test_bad_input_raises_with_file_line_and_field(tmp_path, reason):
    format, records, expected = BAD_INPUTS[reason]
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(DataError) as info:
        read_preference_file(path, format)
    message = str(info.value)
    line = 1 if reason == "malformed_dialogue" else 2
    assert message.startswith(f"{path}:{line}: ") and expected in message, message
    assert info.value.reason == reason and isinstance(info.value, ValueError)


@pytest.mark.parametrize("reason", sorted(BAD_INPUTS))
def test_bad_input_skipped_counted_and_logged(tmp_path, caplog, reason):
    format, records, _ = BAD_INPUTS[reason]
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with caplog.at_level(logging.WARNING, logger="hafrm_jax.data.readers"):
        result = read_preference_file(path, format, on_error="skip")
    bad = 3 if reason == "malformed_dialogue" else 1
    assert result.skipped == {reason: bad} and len(result.pairs) == 3 - bad
    assert result.records == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "bad.jsonl" in warnings[0].getMessage()


def test_skip_counts_every_reason_and_blank_lines_are_not_records(tmp_path):
    records = [GOOD_HH, b"", b"not json", b"[1, 2]", {"rejected": "x"}, {**GOOD_HH, "chosen": 3},
               b"\xc3\x28", GOOD_HH]
    result = read_preference_file(write_jsonl(tmp_path / "m.jsonl", records), "hh_rlhf",
                                  on_error="skip")
    assert result.skipped == {"invalid_json": 1, "wrong_type": 2, "missing_field": 1,
                              "invalid_utf8": 1}
    assert len(result.pairs) == 2 and result.records == 7


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".json", ".json.gz", ".parquet"])
def test_file_variants_read_the_same_pairs(tmp_path, suffix):
    writer = {".jsonl.gz": write_jsonl, ".json": write_json, ".json.gz": write_json,
              ".parquet": write_parquet}[suffix]
    records = [arena("model_a"), arena("tie"), arena("model_b")]  # nested lists of structs
    result = read_preference_file(writer(tmp_path / f"arena{suffix}", records), "chatbot_arena")
    expected = read_preference_file(write_jsonl(tmp_path / "arena.jsonl", records),
                                    "chatbot_arena")
    assert result == expected and len(result.pairs) == 2


@pytest.mark.parametrize("suffix", [".json", ".parquet"])
def test_record_files_name_the_record_index(tmp_path, suffix):
    writer = write_json if suffix == ".json" else write_parquet
    path = writer(tmp_path / f"beaver{suffix}", [BEAVER, {**BEAVER, "response_0": " "}])
    with pytest.raises(DataError, match=rf"beaver\{suffix}: record index 1: field 'response_0'"):
        read_preference_file(path, "beaver")
    assert read_preference_file(path, "beaver", on_error="skip").skipped == {"empty_response": 1}


def test_whole_file_errors_of_json_always_raise(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"prompt": "a"},\n oops]')
    with pytest.raises(DataError, match="broken.json: invalid JSON at line 2"):
        read_preference_file(broken, "generic", on_error="skip")
    not_list = write_json(tmp_path / "obj.json", {"prompt": "a"})
    with pytest.raises(DataError, match="top-level list"):
        read_preference_file(not_list, "generic")


def test_several_paths_are_concatenated_and_counted(tmp_path):
    first = write_jsonl(tmp_path / "1.jsonl", [ALPACA])
    second = write_json(tmp_path / "2.json", [ALPACA, {**ALPACA, "preference": 3}])
    result = read_preference_file([first, second], "alpaca_farm", on_error="skip")
    assert len(result.pairs) == 2 and result.records == 3
    assert result.skipped == {"invalid_value": 1}


def test_dispatch_validates_format_options_and_suffix(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", HH_RECORDS)
    with pytest.raises(ValueError, match="unknown format 'hh'.*alpaca_farm.*hh_rlhf"):
        read_preference_file(path, "hh")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['single'\].*single_turn"):
        read_preference_file(path, "hh_rlhf", single=True)
    with pytest.raises(ValueError, match="pair_selection must be one of"):
        read_preference_file(path, "beaver", pair_selection="safest")
    with pytest.raises(ValueError, match="on_error"):
        read_preference_file(path, "hh_rlhf", on_error="ignore")
    with pytest.raises(ValueError, match="unknown suffix"):
        read_preference_file(tmp_path / "hh.csv", "hh_rlhf")
    assert sorted(READERS) == ["alpaca_farm", "beaver", "chatbot_arena", "generic", "hh_rlhf"]


def test_parquet_without_pyarrow_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        read_preference_file(tmp_path / "x.parquet", "generic")


def test_hh_rlhf_real_sample():
    if not HH_SAMPLE.exists():
        pytest.skip(f"the real HH-RLHF sample is absent ({HH_SAMPLE}); it lives in ../shared")
    result = read_preference_file(HH_SAMPLE, "hh_rlhf", on_error="skip")
    # Every record is accounted for; the release itself has 4 empty chosen responses and 2
    # pairs whose dialogues differ before the last assistant turn.
    assert result.records == 1800 and result.filtered == {}
    assert result.skipped == {"empty_response": 4, "prompt_mismatch": 2}
    assert len(result.pairs) == 1794
    for pair in result.pairs:
        assert pair.prompt[-1]["role"] == "user"
        assert "\n\nAssistant:" not in pair.chosen + pair.rejected
        assert pair.chosen.strip() and pair.rejected.strip()
    single = read_preference_file(HH_SAMPLE, "hh_rlhf", on_error="skip", single_turn=True)
    assert len(single.pairs) + single.filtered["multi_turn"] + sum(single.skipped.values()) == 1800
    turns = [len(pair.prompt) for pair in result.pairs]
    print(f"\nHH sample: {len(result.pairs)} pairs of {result.records} records, skipped "
          f"{result.skipped}; single-turn {len(single.pairs)}; mean prompt turns "
          f"{statistics.mean(turns):.2f} (max {max(turns)})")
