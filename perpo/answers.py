"""Reading a model's answer: the count it states, the box it names, how far its text is from
the truth. Rewards (:mod:`perpo.rewards`) and metrics (:mod:`perpo.evaluation.metrics`) both read
answers through these functions, so a reward and its metric never disagree on what an answer
says."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from rapidfuzz.distance import Levenshtein

from perpo.boxes import BoxFormat, get_box_format, read_box

# Number words a count is written with: units and teens, tens, and the two scales.
_SMALL = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = {word: 10 * k for k, word in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
NUMBER_WORDS: dict[str, int] = {**{word: value for value, word in enumerate(_SMALL)}, **_TENS}
_SCALES = {"hundred": 100, "thousand": 1000}

# "no <word>" reads as a count of 0 ("there are no circles"), except in these phrases, which
# state no count ("no idea", "no number", "no, ...").
_NO_EXCEPTIONS = frozenset(
    "idea clue way answer answers number numbers count counts image picture sure doubt problem "
    "matter more less longer thanks thank comment there it i they this that the we you not".split()
)

# One token of an answer: an ASCII integer (with thousands separators "1,000", and a minus sign
# right before it that no letter or digit precedes) or a word. Digits may follow letters
# ("3circles" and "x3" both hold a 3).
_TOKEN_RE = re.compile(
    r"(?P<sign>(?<![^\W_])[-\u2212])?(?P<digits>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)|(?P<word>[^\W\d_]+)"
)
# What may stand between two words of one number: spaces and at most one hyphen.
_JOINER_RE = re.compile(r"\s*-?\s*")

# The most words one number takes ("nine hundred and ninety nine thousand nine hundred and ...").
_MAX_RUN = 16

# Larger counts saturate here; avoids int() on thousands of digits (Python's int-digits limit).
_MAX_COUNT = 10**18


def _word_number(words: list[str]) -> int | None:
    """The value of the longest prefix of ``words`` (lower case) that is an English number,
    ``None`` when even the first word does not start one. Grammar: ``[a | 1-9] hundred``,
    ``<0-999> thousand``, tens and units (``twenty one``, ``twenty-one``), ``and`` after a scale
    (``one hundred and five``)."""
    total, current, last = 0, 0, None  # last: kind of the previous word read
    value = None  # the value of the longest valid prefix read so far
    i = 0
    while i < len(words):
        word = words[i]
        if word == "a" and last is None and i + 1 < len(words) and words[i + 1] in _SCALES:
            current, last = 1, "unit"
        elif word == "and" and last in ("hundred", "thousand"):
            last = "and"  # only kept if a number follows; value stays that of the prefix before
        elif word == "zero":
            if last is not None:
                break
            return 0
        elif word in NUMBER_WORDS:
            v = NUMBER_WORDS[word]
            if v < 10 and last in (None, "tens", "hundred", "thousand", "and"):
                current, last = current + v, "unit"
            elif v >= 10 and last in (None, "hundred", "thousand", "and"):
                current, last = current + v, "tens" if v in _TENS.values() else "teen"
            else:
                break
        elif word == "hundred" and last == "unit" and current < 10:
            current, last = current * 100, "hundred"
        elif word == "thousand" and last in ("unit", "teen", "tens", "hundred") and total == 0:
            total, current, last = current * 1000, 0, "thousand"
        else:
            break
        if last != "and":
            value = total + current
        i += 1
    return value


def parse_count(text: str) -> int | None:
    """The count ``text`` states, read as a person reads it, or ``None`` when it states none.

    The first of these in the text wins:

    - an integer in ASCII digits, thousands separators allowed: ``"I see 3 circles"`` -> 3,
      ``"1,000"`` -> 1000, ``"007"`` -> 7, ``"2.5"`` -> 2 (the integer part), ``"3circles"`` -> 3;
      more than 18 digits saturate at 10**18;
    - English number words up to the thousands, any case, hyphenated or not: ``"three"`` -> 3,
      ``"twenty-one"`` / ``"twenty one"`` -> 21, ``"a hundred"`` / ``"one hundred"`` -> 100,
      ``"two hundred and five"`` -> 205;
    - ``"none"``, ``"zero"``, or ``"no"`` before a word (``"there are no circles"``) -> 0; not
      ``"no idea"`` / ``"no number"`` / ``"No, ..."``, which state no count.

    **Negative numbers are not counts**: a minus sign directly before the digits (``"-3"``,
    ``"−3"``; not a hyphen after a letter or digit, so ``"3-4"`` reads 3 and ``"COVID-19"``
    reads 19) or ``"minus"`` / ``"negative"`` before a number make the answer unparsed
    (``None``): the model stated a number that no count can be, which is neither the number's
    absolute value nor a later number of the text. Non-ASCII digits are not read.
    """
    if not isinstance(text, str):
        return None
    tokens = list(_TOKEN_RE.finditer(text))
    for k, match in enumerate(tokens):
        if match.group("digits") is not None:
            if match.group("sign"):
                return None
            digits = match.group("digits").replace(",", "").lstrip("0") or "0"
            return _MAX_COUNT if len(digits) > 18 else int(digits)
        word = match.group("word").lower()
        # the words joined to this one by spaces / one hyphen (a number written in words)
        run = [word]
        for prev, nxt in zip(tokens[k : k + _MAX_RUN], tokens[k + 1 : k + _MAX_RUN]):
            if nxt.group("word") is None or not _JOINER_RE.fullmatch(text, prev.end(), nxt.start()):
                break
            run.append(nxt.group("word").lower())
        if word in ("minus", "negative") and len(run) > 1 and _word_number(run[1:]) is not None:
            return None
        if word in ("minus", "negative") and k + 1 < len(tokens) and tokens[k + 1].group("digits") is not None:
            if text[match.end() : tokens[k + 1].start()].isspace():
                return None
        value = _word_number(run)
        if value is not None:
            return value
        if word == "none":
            return 0
        if word == "no" and len(run) > 1 and run[1] not in _NO_EXCEPTIONS:
            if "-" not in text[match.end() : tokens[k + 1].start()]:  # "No - there are 3" is no count
                return 0
    return None


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert / delete / substitute, each cost 1) between two strings.

    rapidfuzz's C++ implementation (bit-parallel, O(len / 64 * len)): a 3,000-character page
    against another takes well under a millisecond (benchmarks/reward_throughput.md).
    """
    return Levenshtein.distance(a, b)


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


# -- yes / no (the existence probe) --------------------------------------------------------------

_WORD_RE = re.compile(r"[a-z]+")


def _first_sentence(text: str) -> str:
    # POPE's evaluate.py: "Only keep the first sentence" (text up to the first '.')
    return text.split(".", 1)[0]


def pope_yes_no(text: str) -> str:
    """POPE's own reading of an answer, exactly (Li et al. 2023, RUCAIBox/POPE ``evaluate.py``;
    LLaVA's ``eval_pope.py`` and others copy it): keep the text before the first ``.``, drop the
    commas, split on single spaces; ``"no"`` when a word is ``No``, ``no`` or ``not`` (case as
    written), else ``"yes"`` -- every answer is read, an empty or garbled one as yes."""
    if not isinstance(text, str):
        text = ""
    words = _first_sentence(text).replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def parse_yes_no(text: str) -> str | None:
    """The yes / no an answer states, or ``None`` when it states neither.

    POPE's rule (:func:`pope_yes_no`) with two differences, so it is NOT POPE's reading and the
    metrics built on it are named apart from POPE's: the words of the first sentence are read
    in any case and without punctuation (``"NO!"`` and ``"Not."`` read no; POPE reads them
    yes), and an answer holding neither ``yes`` nor ``no`` / ``not`` is unparsed (``None``), not
    yes. As in POPE, ``no`` / ``not`` win over ``yes`` (``"yes, no doubt"`` reads no).
    """
    if not isinstance(text, str):
        return None
    words = set(_WORD_RE.findall(_first_sentence(text).lower()))
    if words & {"no", "not"}:
        return "no"
    if "yes" in words:
        return "yes"
    return None
