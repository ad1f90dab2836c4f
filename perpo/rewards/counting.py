"""Counting rewards: the first number in the answer against the true count."""

from __future__ import annotations

import re
from collections.abc import Mapping

from perpo.rewards import register_reward

__all__ = ["NUMBER_WORDS", "parse_count", "count", "count_exact"]

NUMBER_WORDS: dict[str, int] = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}

# Digits (ASCII only; not glued to a preceding digit) or a whole English number word.
_COUNT_RE = re.compile(
    r"(?P<digits>[0-9]+)|\b(?P<word>" + "|".join(sorted(NUMBER_WORDS, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
# Larger counts saturate here; avoids int() on thousands of digits (Python's int-digits limit).
_MAX_COUNT = 10**18


def parse_count(text: str) -> int | None:
    """The first integer in ``text`` (digits or a word zero..twenty, any case), or ``None``.

    ``"I see 3 circles"`` -> 3, ``"Three."`` -> 3, ``"2.5"`` -> 2 (the first integer),
    ``"no number"`` -> None. Numbers with more than 18 digits saturate at 10**18.
    """
    if not isinstance(text, str):
        return None
    match = _COUNT_RE.search(text)
    if match is None:
        return None
    if match.group("word") is not None:
        return NUMBER_WORDS[match.group("word").lower()]
    digits = match.group("digits").lstrip("0") or "0"
    if len(digits) > 18:
        return _MAX_COUNT
    return int(digits)


@register_reward("count", tasks=("counting",))
def count(completion: str, record: Mapping) -> float | None:
    """``max(0, 1 - |pred - target| / max(target, 1))``; ``None`` when no number is found."""
    pred = parse_count(completion)
    if pred is None:
        return None
    target = int(record["target"])
    return max(0.0, 1.0 - abs(pred - target) / max(target, 1))


@register_reward("count_exact", tasks=("counting",))
def count_exact(completion: str, record: Mapping) -> float | None:
    """1.0 if the first number equals the target, else 0.0; ``None`` when no number is found."""
    pred = parse_count(completion)
    if pred is None:
        return None
    return 1.0 if pred == int(record["target"]) else 0.0
