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


# -- counting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("3", 3),
        ("There are 3 circles.", 3),
        ("three", 3),
        ("Three circles, not 4", 3),
        ("I count TWENTY.", 20),
        ("zero", 0),
        ("12 or 13", 12),
        ("thirteen", 13),
        ("2.5", 2),
        ("007", 7),
        ("3circles", 3),
        ("no number", None),
        ("none", None),
        ("someone", None),
        ("", None),
        ("٣", None),  # non-ASCII digits are not read
    ],
)
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


# -- robustness -------------------------------------------------------------------------------

RECORDS = {
    "iou": grounding_record([0.1, 0.1, 0.5, 0.5]),
    "giou": grounding_record([0.1, 0.1, 0.5, 0.5]),
    "edit": {"target": "hello world", "width": 64, "height": 64},
    "count": {"target": 4, "width": 64, "height": 64},
    "count_exact": {"target": 4, "width": 64, "height": 64},
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
