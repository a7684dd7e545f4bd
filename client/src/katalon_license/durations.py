"""Durations as people write them on a command line: 90s, 30m, 2h, 1h30m, or plain seconds."""

from __future__ import annotations

import re

UNITS = {"h": 3600, "m": 60, "s": 1}
DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text: str) -> int:
    """Whole seconds in `text`; ValueError with a message a person can act on otherwise."""
    text = text.strip().lower()
    if text.isdigit():
        return int(text)
    match = DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"{text!r} is not a duration; write it like 90s, 30m, 2h or 1h30m.")
    hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def format_duration(seconds: float) -> str:
    """90 -> '1m30s', 7200 -> '2h'; the shortest form that parse_duration reads back."""
    remaining = max(0, round(seconds))
    if remaining == 0:
        return "0s"
    parts = []
    for unit, size in UNITS.items():
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
