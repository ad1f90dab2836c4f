"""Reading a model's answer: the count it states, the box it names, how far its text is from
the truth. Rewards (:mod:`perpo.rewards`) and metrics (:mod:`perpo.evaluation.metrics`) both read
answers through these functions, so a reward and its metric never disagree on what an answer
says."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from perpo.boxes import BoxFormat, get_box_format, read_box


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


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert / delete / substitute, each cost 1) between two strings.

    Plain O(len(a) * len(b)) dynamic programme with two rows; a shared prefix and suffix are
    stripped first, which makes near-correct OCR answers cheap.
    """
    # strip common prefix / suffix (they never change the distance)
    start = 0
    limit = min(len(a), len(b))
    while start < limit and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(
                min(
                    previous[j] + 1,  # delete ca
                    current[j - 1] + 1,  # insert cb
                    previous[j - 1] + (ca != cb),  # substitute
                )
            )
        previous = current
    return previous[-1]


def normalized_edit_distance(pred: str, target: str) -> float:
    """``edit_distance / max(len)`` after stripping surrounding whitespace; 0.0 when both empty."""
    pred, target = pred.strip(), target.strip()
    longest = max(len(pred), len(target))
    if longest == 0:
        return 0.0
    return edit_distance(pred, target) / longest


@functools.lru_cache(maxsize=None)
def _box_format(name: str) -> BoxFormat:
    return get_box_format(name)


def parse_box(completion: str, record: Mapping, box_format: str = "norm2", box_frame: str = "original") -> list[float] | None:
    """The box in ``completion`` (written in ``box_format``, in ``box_frame``) as normalized xyxy
    of the original image, or ``None``."""
    fmt = _box_format(box_format)
    if not isinstance(completion, str):
        return None
    return read_box(completion, record, fmt, box_frame)
