"""Per-task torchmetrics: hand-computed values, batch additivity, reset, errors, devices, sync.

OCR values follow Nougat's definitions (facebookresearch/nougat, ``nougat/metrics.py``
``compute_metrics(pred, gt, minlen=4)``): per page, edit distance = Levenshtein / max length on
the raw strings, precision / recall / F1 over the SETS of whitespace-split words,
BLEU = ``nltk.translate.bleu([ref_words], hyp_words)``, METEOR = nltk's ``meteor_score``; pages
whose prediction or truth has fewer than 4 characters are not scored; then the mean over pages.
"""

import math
import random
import warnings

import nltk
import pytest
import torch
from nltk.metrics.scores import f_measure, precision, recall

from perpo.evaluation.metrics import CountingMetric, TaskMetrics, nougat_page_metrics


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


# -- OCR: Nougat's definitions ----------------------------------------------------------------------

PRED, GT = "the cat sat on the mat", "the cat sat on a mat"


def test_nougat_page_by_hand():
    """One page, each value derived by hand from Nougat's definitions.

    edit: "the" -> "a" is 1 substitution + 2 deletions = 3, over max(22, 20) = 22 characters.
    Word SETS: pred {the, cat, sat, on, mat} (the repeated "the" counts once), gt adds "a":
    precision 5/5, recall 5/6, F1 = 2 * 1 * 5/6 / (1 + 5/6) = 10/11 (a multiset would give 5/6).
    BLEU-4 (sentence, no smoothing): clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths
    (brevity 1) -> (5/6 * 3/5 * 1/2 * 1/3) ** (1/4) = (1/12) ** (1/4).
    METEOR (nltk, alpha 0.9, beta 3, gamma 0.5): nltk aligns right to left, so the hypothesis'
    second "the" (position 4) takes the reference's only "the" (position 0): matches (1,1), (2,2),
    (3,3), (4,0), (5,5): m = 5 in 3 chunks; P = R = 5/6, F = 5/6; penalty 0.5 (3/5)^3 = 0.108
    -> 5/6 * 0.892.
    """
    page = nougat_page_metrics(PRED, GT)
    assert page["edit_distance"] == pytest.approx(3 / 22)
    assert (page["precision"], page["recall"]) == (pytest.approx(1.0), pytest.approx(5 / 6))
    assert page["f1"] == pytest.approx(10 / 11)
    assert page["bleu"] == pytest.approx((1 / 12) ** 0.25)
    assert page["meteor_nosyn"] == pytest.approx(5 / 6 * (1 - 0.5 * 0.6**3))
    assert "meteor" not in page  # no WordNet given


def test_nougat_edit_distance_on_raw_strings_and_stems():
    # Nougat does not strip: 4 spaces to delete over 15 characters
    assert nougat_page_metrics("  hello world  ", "hello world")["edit_distance"] == pytest.approx(4 / 15)
    # METEOR's stem stage: "cats" ~ "cat" (Porter); 4 matches in 1 chunk, P = R = F = 1,
    # penalty 0.5 (1/4)^3
    page = nougat_page_metrics("the cats sat down", "the cat sat down")
    assert page["meteor_nosyn"] == pytest.approx(1 - 0.5 / 64)
    assert page["bleu"] == pytest.approx(0.0)  # no 4-gram matches: nltk's sentence BLEU is 0


def test_nougat_short_pages_are_not_scored():
    # Nougat: `if len(pred) < minlen or len(gt) < minlen: return {}` with minlen 4
    assert nougat_page_metrics("abc", "abcd efgh") is None
    assert nougat_page_metrics("abcd", "abc") is None
    assert nougat_page_metrics("", "hello world") is None
    assert nougat_page_metrics("abcd", "abcd") is not None


class _Synset:
    def __init__(self, *names):
        self._names = names

    def lemmas(self):
        return [type("Lemma", (), {"name": lambda self, n=n: n})() for n in self._names]


class StubWordNet:
    """automobile ~ car, nothing else. nltk's METEOR looks up the synsets of the Porter STEMS of
    the words still unmatched after the stem stage: "automobil"."""

    def synsets(self, word):
        return [_Synset("car", "automobile")] if word == "automobil" else []


def test_meteor_with_wordnet_synonyms():
    """hyp "the automobile is quick", ref "the car is fast". Without synonyms: the, is match
    -> m = 2 in 2 chunks, P = R = F = 1/2, penalty 0.5 (2/2)^3 -> 0.25. With the synonym
    automobile ~ car: m = 3 in one chunk, P = R = F = 3/4, penalty 0.5 (1/3)^3 -> 0.75 * 53/54."""
    page = nougat_page_metrics("the automobile is quick", "the car is fast", wordnet=StubWordNet())
    assert page["meteor_nosyn"] == pytest.approx(0.25)
    assert page["meteor"] == pytest.approx(0.75 * 53 / 54)
    m = TaskMetrics("ocr", wordnet=StubWordNet())
    m.update(["the automobile is quick"], [{"target": "the car is fast"}])
    assert m.compute()["meteor"] == pytest.approx(0.75 * 53 / 54)
    assert "meteor" not in TaskMetrics("ocr", wordnet=None).compute()


def test_nougat_page_equals_nltk_definitions_on_random_pages():
    """Our page values against Nougat's formula written with nltk's own functions."""
    rng = random.Random(0)
    vocab = "the a of page text cat cats sat on mat model answer λ日本 x y".split()
    for _ in range(60):
        gt = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 30)))
        pred = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 30)))
        page = nougat_page_metrics(pred, gt)
        if len(pred) < 4 or len(gt) < 4:
            assert page is None
            continue
        ref, hyp = gt.split(), pred.split()
        assert page["edit_distance"] == pytest.approx(nltk.edit_distance(pred, gt) / max(len(pred), len(gt)))
        if hyp:
            assert page["precision"] == pytest.approx(precision(set(ref), set(hyp)))
            assert page["recall"] == pytest.approx(recall(set(ref), set(hyp)))
            assert page["f1"] == pytest.approx(f_measure(set(ref), set(hyp)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nltk warns on pages without a matching 4-gram
            assert page["bleu"] == pytest.approx(nltk.translate.bleu([ref], hyp))


def test_ocr_task_metrics_hand_values():
    """Three pages: PRED/GT (scored, values above), a 3-character prediction and an empty one
    (both too short for Nougat: not in the paper columns' means); the reward's distance covers
    every page: 3/22, 6/9 ("abc" -> "abcd efgh": 6 insertions), 1 (empty vs "hello world")."""
    m = TaskMetrics("ocr", wordnet=None)
    m.update([PRED, "abc", ""], [{"target": GT}, {"target": "abcd efgh"}, {"target": "hello world"}])
    out = m.compute()
    assert set(out) == {"edit_distance", "precision", "recall", "f1", "bleu", "meteor_nosyn", "scored_rate", "reward_edit_distance"}
    assert out["edit_distance"] == pytest.approx(3 / 22)
    assert out["precision"] == pytest.approx(1.0) and out["recall"] == pytest.approx(5 / 6)
    assert out["f1"] == pytest.approx(10 / 11)
    assert out["bleu"] == pytest.approx((1 / 12) ** 0.25)
    assert out["meteor_nosyn"] == pytest.approx(5 / 6 * (1 - 0.5 * 0.6**3))
    assert out["scored_rate"] == pytest.approx(1 / 3)
    assert out["reward_edit_distance"] == pytest.approx((3 / 22 + 6 / 9 + 1) / 3)


def test_ocr_no_page_long_enough_is_nan_with_scored_rate_zero():
    m = TaskMetrics("ocr", wordnet=None)
    m.update(["ab"], [{"target": "abc"}])
    out = m.compute()
    assert out["scored_rate"] == 0.0 and out["reward_edit_distance"] == pytest.approx(1 / 3)
    assert math.isnan(out["edit_distance"]) and math.isnan(out["bleu"])


# -- counting ------------------------------------------------------------------------------------


def test_counting_hand_values():
    m = TaskMetrics("counting")
    completions = ["3", "four", "I don't know", "There are 7.", "no idea", "there are no circles", "-2"]
    m.update(completions, [{"target": t} for t in (3, 5, 2, 7, 0, 0, 2)])
    out = m.compute()
    # errors: 0, 1, unparsed -> max(2, 1) = 2, 0, unparsed with target 0 -> 1 (not 0), 0,
    # negative -> unparsed -> 2
    assert out == {
        "accuracy": pytest.approx(3 / 7),
        "mae": pytest.approx((0 + 1 + 2 + 0 + 1 + 0 + 2) / 7),
        "parse_rate": pytest.approx(4 / 7),
    }


def test_counting_unparsed_is_wrong_in_every_metric():
    """An unparsed answer for a target of 0 is wrong for accuracy AND has error 1 in MAE."""
    m = TaskMetrics("counting")
    m.update(["no idea"], [{"target": 0}])
    assert m.compute() == {"accuracy": 0.0, "mae": 1.0, "parse_rate": 0.0}


def test_counting_negative_target_is_an_error():
    with pytest.raises(ValueError, match="negative"):
        CountingMetric().update(["3"], [{"target": -1}])


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


# -- TaskMetrics as a module: devices, dtypes, sync before dividing ---------------------------------


class Holder(torch.nn.Module):
    """Stands for the LightningModule that holds ``val_metrics``."""

    def __init__(self, task):
        super().__init__()
        self.val_metrics = TaskMetrics(task)


@pytest.mark.parametrize("task", sorted(CASES))
def test_states_move_with_the_holding_module(task):
    holder = Holder(task)
    assert isinstance(holder.val_metrics, torch.nn.Module)
    holder.to(torch.device("meta"))
    states = [getattr(holder.val_metrics.main, name) for name in holder.val_metrics.main._defaults]
    assert states and all(s.device.type == "meta" for s in states)
    assert holder.val_metrics.main.device.type == "meta"
    assert holder.state_dict() == {}  # metric states are not checkpointed


def test_a_dtype_cast_keeps_the_sums_exact():
    holder = Holder("counting")
    holder.val_metrics.update(["1"] * 300, [{"target": 1}] * 300)
    holder.to(torch.bfloat16)  # a bf16 sum would stop at 256
    assert holder.val_metrics.main.total.dtype == torch.float64
    holder.val_metrics.update(["1"] * 3, [{"target": 2}] * 3)
    assert holder.val_metrics.compute() == {"accuracy": 300 / 303, "mae": pytest.approx(3 / 303), "parse_rate": 1.0}


def _fake_two_ranks(metric, other_states):
    """Make ``metric`` behave as rank 0 of two: its gather returns [ours, the other rank's]
    for each state, in the order torchmetrics syncs them (the order they were added)."""
    pending = list(other_states)

    def gather(tensor, group=None):
        return [tensor, pending.pop(0).to(tensor)]

    metric.distributed_available_fn = lambda: True
    metric.dist_sync_fn = gather
    return pending


def test_compute_with_no_local_items_still_joins_the_sum():
    """A rank that scored nothing must still sync (the others would hang) and report the
    global values: here the other rank scored "3" for 3 and "x" for 2."""
    other = CountingMetric()
    other.update(["3", "x"], [{"target": 3}, {"target": 2}])
    m = TaskMetrics("counting")
    pending = _fake_two_ranks(m.main, [getattr(other, name) for name in other._defaults])
    out = m.compute()
    assert pending == []  # every state went through the collective
    assert out == {"accuracy": 0.5, "mae": 1.0, "parse_rate": 0.5}


def test_ocr_compute_sums_before_dividing():
    other = TaskMetrics("ocr", wordnet=None)
    other.update([PRED], [{"target": GT}])
    m = TaskMetrics("ocr", wordnet=None)
    m.update(["ab"], [{"target": "abc"}])  # this rank: one page, too short to score
    _fake_two_ranks(m.main, [getattr(other.main, name) for name in other.main._defaults])
    out = m.compute()
    assert out["edit_distance"] == pytest.approx(3 / 22) and out["scored_rate"] == pytest.approx(1 / 2)


# -- existence (POPE-style probe) ------------------------------------------------------------------


def test_existence_hand_values_ours_and_popes():
    m = TaskMetrics("existence")
    # truths yes, no, no, yes; "maybe" states neither (ours: unparsed, wrong; POPE: yes)
    m.update(["Yes.", "maybe", "No", "NOT there"], [{"target": t} for t in ("yes", "no", "no", "yes")])
    values = m.compute()
    assert values["accuracy"] == pytest.approx(2 / 4)
    assert values["yes_rate"] == pytest.approx(1 / 4)
    assert values["parse_rate"] == pytest.approx(3 / 4)
    # POPE reads "maybe" and "NOT there" (not the word "not") as yes: TP 2, FP 1, TN 1, FN 0
    assert values["pope_accuracy"] == pytest.approx(3 / 4)
    assert values["pope_yes_ratio"] == pytest.approx(3 / 4)
    assert values["pope_f1"] == pytest.approx(2 * (2 / 3) * 1.0 / (2 / 3 + 1.0))


def test_existence_rejects_a_target_that_is_not_yes_or_no():
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        TaskMetrics("existence").update(["yes"], [{"target": "maybe"}])


# -- per-item scores ---------------------------------------------------------------------------------


ITEM_CASES = {
    "grounding": (["[0.00, 0.00, 0.50, 0.50]", "[0.25, 0.00, 0.75, 0.50]", "no idea"], [box_rec([0, 0, 0.5, 0.5])] * 3, [1.0, 1 / 3, 0.0]),
    "ocr": (["hello", "hellp", ""], [{"target": "hello"}] * 3, [1.0, 0.8, 0.0]),
    "counting": (["3", "four", "many"], [{"target": 3}, {"target": 5}, {"target": 2}], [1.0, 0.0, 0.0]),
    "existence": (["yes", "No.", "hmm"], [{"target": "yes"}, {"target": "yes"}, {"target": "no"}], [1.0, 0.0, 0.0]),
}


@pytest.mark.parametrize("task", sorted(ITEM_CASES))
def test_item_scores_hand_values_and_their_mean_is_the_metric(task):
    from perpo.evaluation.metrics import ITEM_SCORES

    completions, records, expected = ITEM_CASES[task]
    m = TaskMetrics(task, wordnet=None)
    scores = m.item_scores(completions, records)
    assert scores == pytest.approx(expected)
    m.update(completions, records)
    values = m.compute()
    mean = sum(scores) / len(scores)
    name = ITEM_SCORES[task][1]
    assert (1 - values["reward_edit_distance"] if task == "ocr" else values[name]) == pytest.approx(mean)
    if task == "grounding":
        assert values["acc@0.5"] == pytest.approx(sum(s >= 0.5 for s in scores) / len(scores))


def test_prediction_rows_carry_the_item_score_and_keep_their_keys():
    from perpo.evaluation.loop import prediction_row
    from perpo.prompting import ChatFamily, TaskSpec

    family = ChatFamily(None, "norm2")
    rec = {"id": "g1", **box_rec([0, 0, 0.5, 0.5])}
    row = prediction_row(rec, "[0.25, 0.00, 0.75, 0.50]", TaskSpec("grounding", "{prompt}", 32), family)
    assert set(row) == {"id", "prediction", "score", "box", "box_pixels", "width", "height"}
    assert row["score"] == pytest.approx(1 / 3)
    row = prediction_row({"id": "c1", "target": 3}, "3", TaskSpec("counting", "{prompt}", 4), family)
    assert row == {"id": "c1", "prediction": "3", "score": 1.0}
    row = prediction_row({"id": "e1", "target": "no"}, "yes", TaskSpec("existence", "{prompt}", 4), family)
    assert row == {"id": "e1", "prediction": "yes", "score": 0.0}
    assert prediction_row({"id": "c1", "target": 3}, "3", TaskSpec("counting", "{prompt}", 4), family, 0.25)["score"] == 0.25
