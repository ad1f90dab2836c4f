"""Rewards: hand-checked values, the None contract, robustness, registry."""

import random

import pytest

from perpo.rewards.registry import REWARD_TASKS, REWARDS, get_reward, register_reward, rewards_for_task
from perpo.answers import parse_count
from perpo.answers import edit_distance


def grounding_record(target, width=640, height=480):
    return {"target": target, "width": width, "height": height}


# -- registry ---------------------------------------------------------------------------------


def test_registry_contents_and_tasks():
    assert set(REWARDS) >= {"iou", "giou", "edit", "count", "count_exact"}
    assert REWARD_TASKS["iou"] == ("grounding",)
    assert REWARD_TASKS["giou"] == ("grounding",)
    assert REWARD_TASKS["edit"] == ("ocr",)
    assert REWARD_TASKS["count"] == ("counting",)
    assert REWARD_TASKS["count_exact"] == ("counting",)
    assert rewards_for_task("counting") == ["count", "count_exact"]
    assert get_reward("iou") is REWARDS["iou"]


def test_unknown_reward_error_names_it_and_lists_known():
    with pytest.raises(ValueError) as err:
        get_reward("bleurt")
    message = str(err.value)
    assert "bleurt" in message
    for name in ("iou", "giou", "edit", "count", "count_exact"):
        assert name in message


def test_register_reward_decorator():
    @register_reward("_test_const", tasks=("ocr", "counting"))
    def const(completion, record):
        return 0.5

    try:
        assert get_reward("_test_const")("x", {}) == 0.5
        assert REWARD_TASKS["_test_const"] == ("ocr", "counting")
        with pytest.raises(ValueError):
            register_reward("_test_const")(lambda c, r: 0.0)
    finally:
        REWARDS.pop("_test_const")
        REWARD_TASKS.pop("_test_const")


# -- grounding --------------------------------------------------------------------------------


def test_iou_hand_values():
    iou = get_reward("iou")
    rec = grounding_record([0.0, 0.0, 0.5, 0.5])
    assert iou("[0.00, 0.00, 0.50, 0.50]", rec) == 1.0
    assert iou("[0.60, 0.60, 0.90, 0.90]", rec) == 0.0
    assert iou("[0.25, 0.00, 0.75, 0.50]", rec) == pytest.approx(1 / 3)
    assert iou("[0.00, 0.00, 0.25, 0.25]", rec) == pytest.approx(0.25)  # containment: area ratio
    assert iou("[0.30, 0.30, 0.30, 0.30]", rec) == 0.0  # zero area
    assert iou("I cannot tell.", rec) is None
    assert iou("", rec) is None


def test_iou_other_box_formats():
    iou = get_reward("iou")
    rec = grounding_record([0.1, 0.1, 0.5, 0.5])
    assert iou('[{"bbox_2d": [64, 48, 320, 240]}]', rec, box_format="qwen25vl") == pytest.approx(1.0)
    assert iou("<|box_start|>(100,100),(500,500)<|box_end|>", rec, box_format="qwen2vl") == pytest.approx(1.0)
    assert iou("[100, 100, 500, 500]", rec, box_format="int1000") == pytest.approx(1.0)
    with pytest.raises(ValueError):
        iou("[0.1, 0.1, 0.5, 0.5]", rec, box_format="nope")  # configuration error, not model output


def test_giou_range_and_ordering():
    giou = get_reward("giou")
    rec = grounding_record([0.0, 0.0, 0.1, 0.1])
    assert giou("[0.00, 0.00, 0.10, 0.10]", rec) == pytest.approx(1.0)
    touching = giou("[0.10, 0.00, 0.20, 0.10]", rec)
    far = giou("[0.90, 0.90, 1.00, 1.00]", rec)
    assert touching == pytest.approx(0.5)  # GIoU 0
    assert 0.0 <= far < touching
    # diagonal corners of the unit square: GIoU -0.5 -> 0.25
    assert giou("[0.5, 0.5, 1.0, 1.0]", grounding_record([0.0, 0.0, 0.5, 0.5])) == pytest.approx(0.25)
    assert giou("nothing", rec) is None


# -- text -------------------------------------------------------------------------------------


def test_edit_distance_hand_values():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("abc", "") == 3
    assert edit_distance("", "") == 0
    assert edit_distance("flaw", "lawn") == 2
    assert edit_distance("abc", "abc") == 0
    assert edit_distance("ab", "ba") == 2


def test_edit_reward_hand_values():
    edit = get_reward("edit")
    assert edit("kitten", {"target": "sitting"}) == pytest.approx(1 - 3 / 7)
    assert edit("  sitting \n", {"target": "sitting"}) == 1.0  # surrounding whitespace stripped
    assert edit("", {"target": ""}) == 1.0
    assert edit("   ", {"target": ""}) == 1.0
    assert edit("", {"target": "abc"}) == 0.0  # parsed (not None), just wrong
    assert edit("xyz", {"target": "abc"}) == 0.0
    assert edit("日本語", {"target": "日本"}) == pytest.approx(1 - 1 / 3)


def test_edit_distance_matches_brute_force():
    rng = random.Random(1)

    def reference(a, b):
        d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
        return d[-1][-1]

    for _ in range(300):
        a = "".join(rng.choice("abc") for _ in range(rng.randint(0, 8)))
        b = "".join(rng.choice("abc") for _ in range(rng.randint(0, 8)))
        assert edit_distance(a, b) == reference(a, b)


def _old_edit_distance(a: str, b: str) -> int:
    """The pure-Python two-row dynamic programme perpo used before rapidfuzz (commit 0a8b2c4)."""
    start, limit = 0, min(len(a), len(b))
    while start < limit and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a, end_b = end_a - 1, end_b - 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def test_edit_distance_equals_the_old_implementation_unicode_and_long():
    rng = random.Random(7)
    alphabet = "ab c\n" + "é日本語🙂\u0301\x00"  # accents, CJK, astral emoji, a combining mark, NUL
    for _ in range(400):
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert edit_distance(a, b) == _old_edit_distance(a, b), (a, b)
    for _ in range(3):  # page-length texts (beyond rapidfuzz's 64-character single-word path)
        a = "".join(rng.choice(alphabet) for _ in range(rng.randint(300, 600)))
        b = "".join(rng.choice(alphabet) for _ in range(rng.randint(300, 600)))
        assert edit_distance(a, b) == _old_edit_distance(a, b)
    assert edit_distance("🙂a", "a") == 1  # one code point, not two UTF-16 units


# -- counting ---------------------------------------------------------------------------------


# (answer, the count a person reads in it); None: the answer states no count
PARSE_COUNT_CASES = [
    ("3", 3),
    ("There are 3 circles.", 3),
    ("three", 3),
    ("Three circles, not 4", 3),
    ("I count TWENTY.", 20),
    ("zero", 0),
    ("12 or 13", 12),
    ("thirteen", 13),
    ("2.5", 2),  # the integer part
    ("007", 7),
    ("3circles", 3),
    ("", None),
    ("someone", None),  # "one" inside a word is no number
    ("٣", None),  # non-ASCII digits are not read
    # number words beyond twenty, hyphenated or not
    ("twenty-one", 21),
    ("twenty one", 21),
    ("Twenty-One circles", 21),
    ("ninety nine", 99),
    ("ninety-nine red squares", 99),
    ("forty", 40),
    ("a hundred", 100),
    ("one hundred", 100),
    ("about a hundred dots", 100),
    ("one hundred and five", 105),
    ("two hundred thirty-four", 234),
    ("nine hundred ninety-nine", 999),
    ("a thousand", 1000),
    ("twelve thousand", 12000),
    ("two thousand three hundred and forty-five", 2345),
    ("one two three", 1),  # a list of numbers: the first
    ("twenty twelve", 20),
    ("a dog and 3 cats", 3),  # "a" is a number only before hundred / thousand
    ("one hundred and", 100),
    # counts of zero
    ("none", 0),
    ("None.", 0),
    ("None of them", 0),
    ("there are no circles", 0),
    ("There are no red circles in the image.", 0),
    ("no idea", None),
    ("no number", None),
    ("No.", None),  # "no" alone states no count
    ("No, there are 3 circles", 3),
    ("No - there are 3", 3),
    ("nothing", None),
    # thousands separators
    ("1,000", 1000),
    ("There are 1,234 stars", 1234),
    ("1,000,000", 1000000),
    ("1,5", 1),  # not a thousands group
    ("1, 2, 3", 1),
    # negative numbers are not counts
    ("-3", None),
    ("\u22123", None),  # unicode minus sign
    ("Count: -3", None),
    ("minus three", None),
    ("minus 3", None),
    ("negative 2", None),
    ("3-4 circles", 3),  # a range, not a negative number
    ("COVID-19", 19),  # a hyphen after a letter is no minus sign
]


@pytest.mark.parametrize("text, value", PARSE_COUNT_CASES)
def test_parse_count(text, value):
    assert parse_count(text) == value


def test_parse_count_huge_saturates():
    assert parse_count("9" * 10000) == 10**18
    assert parse_count("123456789012345678") == 123456789012345678


def test_count_hand_values():
    count, exact = get_reward("count"), get_reward("count_exact")
    assert count("2", {"target": 3}) == pytest.approx(2 / 3)
    assert count("three", {"target": 3}) == 1.0
    assert count("9", {"target": 3}) == 0.0  # clipped at 0
    assert count("0", {"target": 0}) == 1.0
    assert count("1", {"target": 0}) == 0.0
    assert count("no number", {"target": 3}) is None
    assert count("9" * 5000, {"target": 3}) == 0.0
    assert exact("3", {"target": 3}) == 1.0
    assert exact("4", {"target": 3}) == 0.0
    assert exact("nothing", {"target": 3}) is None


def test_count_rewards_read_counts_as_the_metric_does():
    count, exact = get_reward("count"), get_reward("count_exact")
    assert count("twenty-one", {"target": 21}) == 1.0  # read 20 before
    assert count("1,000", {"target": 1000}) == 1.0  # read 1 before
    assert count("there are no circles", {"target": 0}) == 1.0  # no count before
    assert exact("none", {"target": 0}) == 1.0
    assert count("-3", {"target": 3}) is None  # read 3 before: a negative number is no count
    assert count("two hundred", {"target": 100}) == 0.0  # error 100 of 100


# -- yes / no (existence probe) ----------------------------------------------------------------

YES_NO_CASES = [
    ("yes", "yes"), ("Yes.", "yes"), ("YES!", "yes"), ("yes, there is", "yes"),
    ("no", "no"), ("No.", "no"), ("NO", "no"), ("Not at all", "no"), ("there is not", "no"),
    ("yes, no doubt", "no"),  # POPE: no / not win over yes
    ("There is a red circle. No square.", None),  # only the first sentence is read (POPE)
    ("maybe", None), ("", None), ("yesterday", None), ("nothing", None), ("[0.1, 0.2]", None),
]


@pytest.mark.parametrize("text, value", YES_NO_CASES)
def test_parse_yes_no(text, value):
    from perpo.answers import parse_yes_no

    assert parse_yes_no(text) == value


def test_pope_reading_is_popes_exactly():
    """RUCAIBox/POPE evaluate.py: first sentence, commas dropped, split on ' ', no if the word
    No / no / not is there (case as written), else yes -- unparseable answers read yes."""
    from perpo.answers import pope_yes_no

    assert [pope_yes_no(t) for t in ("No", "no, it is not", "Yes", "maybe", "", "NO", "No!", "Not.", "yes. no")] == [
        "no", "no", "yes", "yes", "yes", "yes", "yes", "yes", "yes",
    ]  # fmt: skip


def test_yes_no_reward_hand_values():
    fn = get_reward("yes_no")
    assert REWARD_TASKS["yes_no"] == ("existence",)
    assert rewards_for_task("existence") == ["yes_no"]
    yes, no = {"target": "yes"}, {"target": "no"}
    assert fn("Yes.", yes) == 1.0 and fn("no", yes) == 0.0
    assert fn("No, there is not.", no) == 1.0 and fn("yes", no) == 0.0
    assert fn("a red circle", yes) is None and fn("", no) is None and fn(None, no) is None  # type: ignore[arg-type]


# -- robustness -------------------------------------------------------------------------------

RECORDS = {
    "iou": grounding_record([0.1, 0.1, 0.5, 0.5]),
    "giou": grounding_record([0.1, 0.1, 0.5, 0.5]),
    "edit": {"target": "hello world", "width": 64, "height": 64},
    "count": {"target": 4, "width": 64, "height": 64},
    "count_exact": {"target": 4, "width": 64, "height": 64},
    "yes_no": {"target": "no", "width": 64, "height": 64},
}


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_rewards_never_raise_and_stay_in_range(name):
    fn = get_reward(name)
    rng = random.Random(name)
    alphabet = "0123456789.,-[]() eEnaif\n" + "héllo wörld 中文🙂" + "three twenty"
    texts = ["", " ", "\x00", "1e309", "[1e309, nan, 1, 2]", "9" * 6000, "🙂" * 100]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    for text in texts:
        value = fn(text, RECORDS[name])
        assert value is None or (isinstance(value, float) and 0.0 <= value <= 1.0), (text, value)
    assert fn(None, RECORDS[name]) is None  # type: ignore[arg-type]
