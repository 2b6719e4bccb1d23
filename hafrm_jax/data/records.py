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
