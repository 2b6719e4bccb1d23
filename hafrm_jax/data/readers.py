"""Readers of public preference datasets: files in, `PreferencePair`s and exact counts out.

Each format has one pure record parser (`parse_hh_rlhf`, ...), chosen from the explicit table
`READERS`; `iter_records` is the only I/O (.jsonl / .json, optionally gzipped, and .parquet).
A parser returns a pair, returns a string (the reason the record is dropped on purpose: a tie, a
filter option) or raises `RecordError` (bad input). Nothing is dropped silently: `ReadResult`
counts every record read as a pair, as skipped (bad input, per reason) or as filtered.
Filters are applied as soon as the fields they need are checked, so a record that is filtered
is never also counted as bad.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from hafrm_jax.data.records import Message, PreferencePair, user_turn

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
ON_ERROR = ("raise", "skip")


class RecordError(Exception):
    """Bad input in one record: `reason` is the count key, `field` the offending field."""

    def __init__(self, reason: str, detail: str, field: str | None = None):
        super().__init__(detail if field is None else f"field '{field}': {detail}")
        self.reason, self.field = reason, field


class DataError(ValueError):
    """Bad input, located: `<file>:<line>: field '<name>': <what is wrong>`."""

    def __init__(self, where: str, error: RecordError):
        super().__init__(f"{where}: {error}")
        self.where, self.reason, self.field = where, error.reason, error.field


@dataclasses.dataclass(frozen=True)
class ReadResult:
    """The pairs read and where every other record went: records = pairs + skipped + filtered."""

    pairs: list[PreferencePair]
    records: int  # records read, whatever became of them
    skipped: dict[str, int]  # bad input, per reason (only with on_error="skip")
    filtered: dict[str, int]  # dropped on purpose: ties, filter options


def _type_name(value: Any) -> str:
    names = {type(None): "null", str: "string", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _field(record: Mapping, name: str) -> Any:
    if name not in record:
        raise RecordError("missing_field", "missing", name)
    return record[name]


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RecordError("wrong_type", f"expected a string, got {_type_name(value)}", field)
    return value


def _response(value: Any, field: str) -> str:
    """A response string, which must not be empty or whitespace only."""
    if not _text(value, field).strip():
        raise RecordError("empty_response", "the response is empty", field)
    return value


def _choice(value: Any, field: str, allowed: tuple) -> Any:
    """One of `allowed`, of their exact type (so that True does not pass for 1)."""
    if type(value) is not type(allowed[0]):
        raise RecordError("wrong_type", f"expected {_type_name(allowed[0])}, got "
                          f"{_type_name(value)}", field)
    if value not in allowed:
        raise RecordError("invalid_value", f"expected one of {list(allowed)}, got {value!r}",
                          field)
    return value


def _messages(value: Any, field: str) -> list[Message]:
    """A list of {"role", "content"} strings (other keys are dropped)."""
    if not isinstance(value, list):
        raise RecordError("wrong_type", f"expected a list of messages, got {_type_name(value)}",
                          field)
    out = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RecordError("wrong_type", f"expected an object, got {_type_name(message)}",
                              f"{field}[{i}]")
        out.append({key: _text(_field(message, key), f"{field}[{i}].{key}")
                    for key in ("role", "content")})
    return out


def _split_last_turn(prefix: list[Message], messages: list[Message],
                     field: str) -> tuple[list[Message], str]:
    """(prompt, response): the final message must be the assistant's and have a prompt before."""
    if not messages:
        raise RecordError("malformed_dialogue", "no messages", field)
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        raise RecordError("malformed_dialogue", "the last message must be an assistant message, "
                          f"got role {messages[last]['role']!r}", f"{field}[{last}].role")
    # trl's conversational rows may repeat the explicit prompt in each side: taken once
    start = len(prefix) if prefix and messages[:len(prefix)] == prefix else 0
    prompt = prefix + messages[start:last]
    if not prompt:
        raise RecordError("malformed_dialogue", "no prompt messages before the response", field)
    return prompt, _response(messages[last]["content"], f"{field}[{last}].content")


HH_RESPONSE_MARKER = "\n\nAssistant:"
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _strip_one(text: str) -> str:
    """Drop the single space (or other whitespace) that follows a turn marker."""
    return text[1:] if text[:1].isspace() else text


def split_hh_dialogue(dialogue: str, field: str) -> tuple[str, str]:
    """(prompt text, response) of an HH dialogue, cut at its last "\\n\\nAssistant:"."""
    cut = dialogue.rfind(HH_RESPONSE_MARKER)
    if cut < 0:
        raise RecordError("malformed_dialogue", "no '\\n\\nAssistant:' turn", field)
    return dialogue[:cut], _strip_one(dialogue[cut + len(HH_RESPONSE_MARKER):])


def hh_turns(prompt: str, field: str) -> list[Message]:
    """HH prompt text as chat turns; it must open with "Human:" and end on a Human turn."""
    parts = _HH_TURN.split(prompt)  # [text before, role, content, role, content, ...]
    if parts[0] or len(parts) < 3:
        raise RecordError("malformed_dialogue", "the dialogue does not start with a "
                          "'\\n\\nHuman:' turn", field)
    turns = [{"role": _HH_ROLES[role], "content": _strip_one(content)}
             for role, content in zip(parts[1::2], parts[2::2])]
    if turns[-1]["role"] != "user":
        raise RecordError("malformed_dialogue", "the turn before the response is not a Human "
                          "turn", field)
    return turns


def parse_hh_rlhf(record: Mapping, *, single_turn: bool = False) -> PreferencePair | str:
    """Anthropic HH-RLHF: `chosen` and `rejected` are whole dialogues sharing all but the last
    assistant turn. `single_turn` keeps only prompts of exactly one Human turn (what the paper's
    released code trains and tests on; configs/hh.py keeps every turn)."""
    chosen = _text(_field(record, "chosen"), "chosen")
    rejected = _text(_field(record, "rejected"), "rejected")
    prompt, chosen = split_hh_dialogue(chosen, "chosen")
    other_prompt, rejected = split_hh_dialogue(rejected, "rejected")
    if prompt != other_prompt:
        at = next((i for i, (a, b) in enumerate(zip(prompt, other_prompt)) if a != b),
                  min(len(prompt), len(other_prompt)))
        raise RecordError("prompt_mismatch", "its dialogue before the last assistant turn "
                          f"differs from chosen's (from character {at})", "rejected")
    turns = hh_turns(prompt, "chosen")
    if single_turn and len(turns) != 1:
        return "multi_turn"
    return PreferencePair(turns, _response(chosen, "chosen"), _response(rejected, "rejected"))


PAIR_SELECTIONS = ("better", "safer", "safe_vs_unsafe")


def parse_beaver(record: Mapping, *, pair_selection: str = "better") -> PreferencePair | str:
    """PKU-SafeRLHF: chosen is the better / the safer response, or ("safe_vs_unsafe", the
    paper's) the safe one of a pair with exactly one safe response; other pairs are filtered."""
    prompt = _text(_field(record, "prompt"), "prompt")
    if pair_selection == "safe_vs_unsafe":
        safe = [_choice(_field(record, f), f, (True, False))
                for f in ("is_response_0_safe", "is_response_1_safe")]
        if safe[0] == safe[1]:
            return "both_safe" if safe[0] else "both_unsafe"
        chosen_id = 0 if safe[0] else 1
    else:
        name = "better_response_id" if pair_selection == "better" else "safer_response_id"
        chosen_id = _choice(_field(record, name), name, (0, 1))
    responses = [_response(_field(record, f), f) for f in ("response_0", "response_1")]
    return PreferencePair(user_turn(prompt), responses[chosen_id], responses[1 - chosen_id])


def parse_alpaca_farm(record: Mapping) -> PreferencePair:
    """AlpacaFarm human preferences: `preference` (1 or 2) names the preferred output."""
    prompt = _text(_field(record, "instruction"), "instruction")
    extra = _text(_field(record, "input"), "input")
    if extra:
        prompt += "\n\n" + extra
    preferred = _choice(_field(record, "preference"), "preference", (1, 2))
    outputs = [_response(_field(record, f), f) for f in ("output_1", "output_2")]
    return PreferencePair(user_turn(prompt), outputs[preferred - 1], outputs[2 - preferred])


ARENA_WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")


def parse_chatbot_arena(record: Mapping) -> PreferencePair | str:
    """lmsys chatbot_arena_conversations: ties are filtered, and so are multi-turn pairs whose
    histories before the last answers differ ("diverged_history")."""
    winner = _choice(_field(record, "winner"), "winner", ARENA_WINNERS)
    if winner != "model_a" and winner != "model_b":
        return "tie" if winner == "tie" else "tie_bothbad"
    (prompt, answer_a), (prompt_b, answer_b) = (
        _split_last_turn([], _messages(_field(record, name), name), name)
        for name in ("conversation_a", "conversation_b"))
    if prompt != prompt_b:
        return "diverged_history"
    answers = (answer_a, answer_b) if winner == "model_a" else (answer_b, answer_a)
    return PreferencePair(prompt, *answers)


GENERIC_COLUMNS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}


def parse_generic(record: Mapping, *, columns: Mapping[str, str] | None = None) -> PreferencePair:
    """prompt / chosen / rejected columns: all strings, or trl's conversational format (message
    lists, with an explicit prompt list or with the prompt implicit in the shared leading turns;
    the final assistant message of each side is its response)."""
    cols = {**GENERIC_COLUMNS, **(columns or {})}
    chosen = _field(record, cols["chosen"])
    if isinstance(chosen, str):
        prompt = _field(record, cols["prompt"])
        if not isinstance(prompt, str):
            prompt = _messages(prompt, cols["prompt"])
        if not (prompt.strip() if isinstance(prompt, str) else prompt):
            # nothing before the response: its first token would have no position to be
            # predicted from (log-probs) on a tokenizer without BOS
            raise RecordError("empty_prompt", "the prompt is empty", cols["prompt"])
        return PreferencePair(prompt, _response(chosen, cols["chosen"]),
                              _response(_field(record, cols["rejected"]), cols["rejected"]))
    if not isinstance(chosen, list):
        raise RecordError("wrong_type", "expected a string or a list of messages, got "
                          f"{_type_name(chosen)}", cols["chosen"])
    explicit = record.get(cols["prompt"]) is not None
    prefix = _messages(record[cols["prompt"]], cols["prompt"]) if explicit else []
    prompt, chosen = _split_last_turn(prefix, _messages(chosen, cols["chosen"]), cols["chosen"])
    rejected = _messages(_field(record, cols["rejected"]), cols["rejected"])
    other_prompt, rejected = _split_last_turn(prefix, rejected, cols["rejected"])
    if prompt != other_prompt:
        raise RecordError("prompt_mismatch", "its messages before the response differ from "
                          f"{cols['chosen']!r}'s", cols["rejected"])
    return PreferencePair(prompt, chosen, rejected)


def _check_hh(options: dict) -> None:
    if not isinstance(options["single_turn"], bool):
        raise ValueError(f"single_turn must be a bool, got {options['single_turn']!r}")


def _check_beaver(options: dict) -> None:
    if options["pair_selection"] not in PAIR_SELECTIONS:
        raise ValueError(f"pair_selection must be one of {list(PAIR_SELECTIONS)}, got "
                         f"{options['pair_selection']!r}")


def _check_generic(options: dict) -> None:
    columns = options["columns"] or {}
    if not isinstance(columns, Mapping) or not set(columns) <= set(GENERIC_COLUMNS) or not all(
            isinstance(v, str) for v in columns.values()):
        raise ValueError(f"columns must map some of {list(GENERIC_COLUMNS)} to column names, "
                         f"got {columns!r}")


@dataclasses.dataclass(frozen=True)
class Reader:
    """A format: its record parser, its options with their defaults, and their check."""

    parse: Callable[..., PreferencePair | str]
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    check: Callable[[dict], None] = lambda options: None


READERS: dict[str, Reader] = {
    "hh_rlhf": Reader(parse_hh_rlhf, {"single_turn": False}, _check_hh),
    "beaver": Reader(parse_beaver, {"pair_selection": "better"}, _check_beaver),
    "alpaca_farm": Reader(parse_alpaca_farm),
    "chatbot_arena": Reader(parse_chatbot_arena),
    "generic": Reader(parse_generic, {"columns": None}, _check_generic),
}


def _opener(path: str) -> Callable:
    return gzip.open if path.endswith(".gz") else open


def _jsonl_records(path: str) -> Iterator[tuple[str, Any]]:
    """Per line, so that one bad line (invalid UTF-8 or JSON) does not hide the others."""
    with _opener(path)(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:  # a byte-order mark may open the file
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield where, RecordError("invalid_utf8", f"invalid UTF-8 at byte {err.start}")
                continue
            if not line.strip():
                continue  # a blank line is no record
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                yield where, RecordError("invalid_json", f"invalid JSON: {err.msg} (column "
                                         f"{err.colno})")


def _file_error(path: str, reason: str, detail: str) -> DataError:
    return DataError(path, RecordError(reason, detail))


def _json_records(path: str) -> list:
    """A .json file is one document, so a decoding error fails the whole file."""
    with _opener(path)(path, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise _file_error(path, "invalid_utf8", f"invalid UTF-8 at byte {err.start}") from None
    except json.JSONDecodeError as err:
        raise _file_error(path, "invalid_json", f"invalid JSON at line {err.lineno}: "
                          f"{err.msg}") from None
    if not isinstance(data, list):
        raise _file_error(path, "wrong_type", "expected a top-level list of records, got "
                          f"{_type_name(data)}")
    return data


def _parquet_records(path: str) -> list:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from err
    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise _file_error(path, "unreadable", f"cannot read parquet: {err}") from err


def iter_records(path: PathLike) -> Iterator[tuple[str, Any]]:
    """(location, record) for every record of a file, the loader chosen by suffix. The location
    is `file:line` (1-based) for .jsonl, `file: record index i` (0-based) otherwise. Line-level
    decoding errors come as `RecordError` records; whole-file ones raise `DataError`."""
    path = os.fspath(path)
    if path.endswith((".jsonl", ".jsonl.gz")):
        yield from _jsonl_records(path)
        return
    if path.endswith((".json", ".json.gz")):
        records = _json_records(path)
    elif path.endswith(".parquet"):
        records = _parquet_records(path)
    else:
        raise _file_error(path, "unknown_suffix", f"unknown suffix; supported: {list(SUFFIXES)}")
    for index, record in enumerate(records):
        yield f"{path}: record index {index}", record


def as_object(record: Any) -> dict:
    """A record from `iter_records` that is a JSON object; else raise its RecordError (an
    undecodable line) or a wrong-type one."""
    if isinstance(record, RecordError):
        raise record
    if not isinstance(record, dict):
        raise RecordError("wrong_type", f"expected a JSON object, got {_type_name(record)}")
    return record


def _parse(reader: Reader, record: Any, options: dict) -> PreferencePair | str:
    return reader.parse(as_object(record), **options)


def _read(source: str, located: Iterable[tuple[str, Any]], reader: Reader, options: dict,
          on_error: str) -> ReadResult:
    """Parse (location, record) items from one source (a file, a hub split, a TFDS split)."""
    pairs, skipped, filtered, records = [], collections.Counter(), collections.Counter(), 0
    for where, record in located:
        records += 1
        try:
            outcome = _parse(reader, record, options)
        except RecordError as err:
            if on_error == "raise":
                raise DataError(where, err) from None
            skipped[err.reason] += 1
            continue
        if isinstance(outcome, str):
            filtered[outcome] += 1
        else:
            pairs.append(outcome)
    if skipped:
        log.warning("%s: skipped %d of %d records as bad input: %s", source,
                    sum(skipped.values()), records, dict(sorted(skipped.items())))
    return ReadResult(pairs, records, dict(skipped), dict(filtered))


def merge_results(results: list[ReadResult]) -> ReadResult:
    """One ReadResult of several sources: pairs in order, counts summed."""
    skipped, filtered = collections.Counter(), collections.Counter()
    for result in results:
        skipped.update(result.skipped)
        filtered.update(result.filtered)
    return ReadResult([pair for result in results for pair in result.pairs],
                      sum(result.records for result in results), dict(skipped), dict(filtered))


def _reader(format: str, on_error: str, options: dict) -> tuple[Reader, dict]:
    """The reader of `format` and its full options, all checked."""
    if format not in READERS:
        raise ValueError(f"unknown format {format!r}; known formats: {sorted(READERS)}")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {on_error!r}")
    reader = READERS[format]
    unknown = sorted(set(options) - set(reader.defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for format {format!r}; known options: "
                         f"{sorted(reader.defaults) or 'none'}")
    options = {**reader.defaults, **options}
    reader.check(options)
    return reader, options


def check_reader_options(format: str, options: Mapping[str, Any]) -> None:
    """Raise ValueError unless `format` is a reader's and `options` are valid for it."""
    _reader(format, "raise", dict(options))


def read_preference_file(paths: PathLike | Sequence[PathLike], format: str, *,
                         on_error: str = "raise", **options: Any) -> ReadResult:
    """Read one or more files of a format in `READERS`. Bad input raises `DataError`, or with
    on_error="skip" is skipped, counted per reason and summarised in one warning per file."""
    reader, options = _reader(format, on_error, options)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    return merge_results([_read(os.fspath(path), iter_records(path), reader, options, on_error)
                   for path in paths])


def read_preference_records(records: Iterable[Mapping], source: str, format: str, *,
                            on_error: str = "raise", **options: Any) -> ReadResult:
    """Like `read_preference_file`, for records already loaded (a hub or TFDS split); errors
    are located as `<source>: record index i`."""
    reader, options = _reader(format, on_error, options)
    located = ((f"{source}: record index {i}", record) for i, record in enumerate(records))
    return _read(source, located, reader, options, on_error)
