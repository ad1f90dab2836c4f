"""Per-task torchmetrics: hand-computed values, batch additivity, reset, errors."""

import math

import pytest
from torchmetrics.text import BLEUScore

from perpo.evaluation.metrics import ShortTextBLEUScore, TaskMetrics, bag_of_words_prf


def box_rec(target):
    return {"target": target, "width": 100, "height": 100}


def test_unknown_task():
    with pytest.raises(ValueError) as err:
        TaskMetrics("captioning")
    for task in ("grounding", "ocr", "counting"):
        assert task in str(err.value)


def test_grounding_hand_values():
    m = TaskMetrics("grounding")
    m.update(
        [
            "[0.00, 0.00, 0.50, 0.50]",  # IoU 1
            "[0.25, 0.00, 0.75, 0.50]",  # IoU 1/3
            "[0.00, 0.00, 0.40, 0.50]",  # IoU 0.8
            "no idea",  # unparseable -> IoU 0
        ],
        [box_rec([0.0, 0.0, 0.5, 0.5])] * 4,
    )
    out = m.compute()
    assert set(out) == {"acc@0.5", "miou", "parse_rate"}
    assert all(type(v) is float for v in out.values())
    assert out["acc@0.5"] == pytest.approx(2 / 4)
    assert out["miou"] == pytest.approx((1 + 1 / 3 + 0.8 + 0) / 4)
    assert out["parse_rate"] == pytest.approx(3 / 4)


def test_grounding_other_box_format():
    m = TaskMetrics("grounding", box_format="qwen25vl")
    m.update(['[{"bbox_2d": [10, 10, 50, 50]}]'], [box_rec([0.1, 0.1, 0.5, 0.5])])
    assert m.compute() == {"acc@0.5": 1.0, "miou": pytest.approx(1.0), "parse_rate": 1.0}


def test_bag_of_words_prf():
    # pred words {the:2, cat:1}, target {the:1, cat:1, sat:1}: overlap 2
    p, r, f = bag_of_words_prf("the the cat", "the cat sat")
    assert (p, r) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert f == pytest.approx(2 / 3)
    assert bag_of_words_prf("", "abc") == (0.0, 0.0, 0.0)
    assert bag_of_words_prf("", "") == (1.0, 1.0, 1.0)
    assert bag_of_words_prf("x y", "a b") == (0.0, 0.0, 0.0)


def test_ocr_hand_values():
    m = TaskMetrics("ocr")
    m.update(["the cat sat", ""], [{"target": "the cat sat on"}, {"target": "hi"}])
    out = m.compute()
    assert set(out) == {"edit_distance", "precision", "recall", "f1", "meteor", "bleu"}
    # item 1: 3 edits / 14 chars; item 2: empty vs "hi" -> 1
    assert out["edit_distance"] == pytest.approx((3 / 14 + 1) / 2)
    assert out["precision"] == pytest.approx((1 + 0) / 2)
    assert out["recall"] == pytest.approx((3 / 4 + 0) / 2)
    assert out["f1"] == pytest.approx((2 * 0.75 / 1.75 + 0) / 2)
    # METEOR item 1: m = 3, P = 1, R = 3/4, F = 0.75 / (0.9 + 0.1 * 0.75), one chunk ->
    # penalty 0.5 * (1/3)^3; item 2: empty prediction -> 0
    f = 0.75 / (0.9 + 0.075)
    assert out["meteor"] == pytest.approx((f * (1 - 0.5 / 27) + 0) / 2)
    # BLEU: predictions have only orders 1-3 (no 4-gram) -> BLEU-3; all matched -> geometric
    # mean 1; c = 3 words, r = 4 + 1 (closest reference lengths) -> BP = exp(1 - 5/3)
    assert out["bleu"] == pytest.approx(math.exp(1 - 5 / 3))


def test_bleu_equals_torchmetrics_when_all_orders_match():
    preds = ["the quick brown fox jumps over the lazy dog", "a b c d e f"]
    refs = [["the quick brown fox jumped over the lazy dog"], ["a b c d e g"]]
    ours, theirs = ShortTextBLEUScore(), BLEUScore(n_gram=4, smooth=True)
    ours.update(preds, refs)
    theirs.update(preds, refs)
    assert float(ours.compute()) == pytest.approx(float(theirs.compute()), rel=1e-6)


def test_bleu_short_texts_smoothed_not_zero():
    m = ShortTextBLEUScore()
    # 4 words, no matching 4-gram or trigram: torchmetrics would give 0
    m.update(["a b x c"], [["a b y c"]])
    # p1 = 3/4, p2 = (1+1)/(3+1), p3 = (0+1)/(2+1), p4 = (0+1)/(1+1); BP 1
    expected = (0.75 * 0.5 * (1 / 3) * 0.5) ** 0.25
    assert float(m.compute()) == pytest.approx(expected)
    exact = ShortTextBLEUScore()
    exact.update(["hello"], [["hello"]])
    assert float(exact.compute()) == pytest.approx(1.0)  # one word: BLEU-1
    none = ShortTextBLEUScore()
    none.update(["x"], [["y"]])
    assert float(none.compute()) == 0.0


def test_counting_hand_values():
    m = TaskMetrics("counting")
    m.update(["3", "four", "I don't know", "There are 7."], [{"target": t} for t in (3, 5, 2, 7)])
    out = m.compute()
    assert out == {
        "accuracy": pytest.approx(2 / 4),
        "mae": pytest.approx((0 + 1 + 2 + 0) / 4),  # unparseable counts as 0
        "parse_rate": pytest.approx(3 / 4),
    }


CASES = {
    "grounding": (
        ["[0.00, 0.00, 0.50, 0.50]", "[0.25, 0.00, 0.75, 0.50]", "junk", "[0.1, 0.1, 0.2, 0.2]", "[0, 0, 1, 1]"],
        [box_rec([0.0, 0.0, 0.5, 0.5])] * 5,
    ),
    "ocr": (
        ["the cat sat", "", "hello world foo", "a b c d e", "x"],
        [{"target": t} for t in ("the cat sat on", "hi", "hello there world", "a b c d e", "y z")],
    ),
    "counting": (["3", "four", "?", "10", "zero"], [{"target": t} for t in (3, 5, 2, 7, 0)]),
}


@pytest.mark.parametrize("task", sorted(CASES))
def test_two_batches_equal_one(task):
    completions, records = CASES[task]
    split = TaskMetrics(task)
    split.update(completions[:2], records[:2])
    split.update(completions[2:], records[2:])
    whole = TaskMetrics(task)
    whole.update(completions, records)
    a, b = split.compute(), whole.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("task", sorted(CASES))
def test_reset_and_empty(task):
    completions, records = CASES[task]
    m = TaskMetrics(task)
    m.update([], [])
    assert all(math.isnan(v) for v in m.compute().values())
    m.update(completions, records)
    first = m.compute()
    m.reset()
    assert all(math.isnan(v) for v in m.compute().values())
    m.update(completions, records)
    assert m.compute() == pytest.approx(first)


def test_length_mismatch_raises():
    with pytest.raises(ValueError):
        TaskMetrics("counting").update(["1"], [])


def test_meteor_edge_cases_by_hand():
    from perpo.evaluation.metrics import meteor

    # all words matched in one chunk: F = 1, penalty 0.5 * (1/2)^3 = 0.0625 (METEOR's known quirk)
    assert meteor("a b", "a b") == pytest.approx(0.9375)
    # "sat the cat" vs "the cat sat": 3 matches in 2 chunks -> 1 - 0.5 * (2/3)^3
    assert meteor("sat the cat", "the cat sat") == pytest.approx(1 - 0.5 * (2 / 3) ** 3)
    # repeated words match one to one: "the the" vs "the": m = 1, P = 1/2, R = 1
    # F = 0.5 / (0.45 + 0.1) = 0.90909, penalty 0.5 -> 0.45455
    assert meteor("the the", "the") == pytest.approx((0.5 / 0.55) * 0.5)
    assert meteor("", "") == 1.0 and meteor("", "x") == 0.0 and meteor("x", "") == 0.0
    assert meteor("a", "b") == 0.0
