"""The one record type every reader produces: a prompt with a chosen and a rejected response."""

from __future__ import annotations

import dataclasses

Message = dict[str, str]  # {"role": ..., "content": ...}


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """prompt is plain text or chat turns; chosen is the preferred response, rejected the other."""

    prompt: str | list[Message]
    chosen: str
    rejected: str


def user_turn(text: str) -> list[Message]:
    """A plain-text prompt as the single user turn of a chat."""
    return [{"role": "user", "content": text}]


def prompt_format(pairs: list[PreferencePair]) -> str:
    """How a set of pairs gives its prompts: "turns" (chat messages), "text", or "mixed"."""
    kinds = {isinstance(p.prompt, str) for p in pairs}
    return "mixed" if len(kinds) > 1 else "text" if kinds == {True} else "turns"
