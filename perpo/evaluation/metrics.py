"""Evaluation metrics per task, as torchmetrics objects (greedy-decoding evaluation uses these).

``TaskMetrics(task)`` is the one entry point: ``update(completions, records)``, ``compute()`` ->
``dict[str, float]`` (plain python floats), ``reset()``. Underneath, every value is a
``torchmetrics.Metric`` with ``"sum"``-reduced states, so the values are correct under DDP and
updating over several batches equals one update over their concatenation.

Metric names per task:

- grounding: ``acc@0.5`` (share of items with IoU >= 0.5), ``miou`` (mean IoU), ``parse_rate``;
  an unparseable answer counts as IoU 0.
- ocr: ``edit_distance`` (mean normalized edit distance, lower is better), ``precision``,
  ``recall``, ``f1`` (bag of words, per item then averaged), ``meteor`` (exact-match METEOR,
  :func:`meteor`), ``bleu`` (corpus BLEU, see :class:`ShortTextBLEUScore`).
- counting: ``accuracy`` (exact), ``mae`` (an unparseable answer counts as 0), ``parse_rate``.

Means over zero items are ``nan``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import torch
import torchmetrics
from torchmetrics.text import BLEUScore

from perpo.boxes import box_iou
from perpo.answers import normalized_edit_distance, parse_box, parse_count

__all__ = [
    "TASKS",
    "GroundingMetric",
    "OCRMetric",
    "CountingMetric",
    "ShortTextBLEUScore",
    "bag_of_words_prf",
    "TaskMetrics",
]

TASKS = ("grounding", "ocr", "counting")

# IoU values within this of the threshold count as hits (guards against float noise of boxes
# parsed from decimal text, e.g. an IoU that is 0.5 on paper computing as 0.49999999999).
_IOU_EPS = 1e-9


def _zero() -> torch.Tensor:
    return torch.tensor(0.0, dtype=torch.float64)


def _mean(total: torch.Tensor, n: torch.Tensor) -> float:
    n = float(n)
    return float(total) / n if n > 0 else math.nan


def _check_lengths(completions: Sequence, records: Sequence) -> None:
    if len(completions) != len(records):
        raise ValueError(f"got {len(completions)} completions for {len(records)} records")


class GroundingMetric(torchmetrics.Metric):
    """Acc@threshold, mean IoU and parse rate of box answers against ``record["target"]``."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, box_format: str = "norm2", threshold: float = 0.5, box_frame: str = "original", **kwargs):
        super().__init__(**kwargs)
        self.box_format = box_format
        self.box_frame = box_frame
        self.threshold = threshold
        for name in ("hits", "iou_sum", "parsed", "total"):
            self.add_state(name, default=_zero(), dist_reduce_fx="sum")

    def update(self, completions: Sequence[str], records: Sequence[Mapping]) -> None:
        _check_lengths(completions, records)
        for completion, record in zip(completions, records):
            box = parse_box(completion, record, self.box_format, self.box_frame)
            iou = 0.0 if box is None else box_iou(box, [float(v) for v in record["target"]])
            self.hits += float(iou >= self.threshold - _IOU_EPS)
            self.iou_sum += iou
            self.parsed += float(box is not None)
            self.total += 1.0

    def compute(self) -> dict[str, float]:
        return {
            f"acc@{self.threshold:g}": _mean(self.hits, self.total),
            "miou": _mean(self.iou_sum, self.total),
            "parse_rate": _mean(self.parsed, self.total),
        }


def bag_of_words_prf(pred: str, target: str) -> tuple[float, float, float]:
    """Bag-of-words precision, recall, F1 of one prediction.

    Words are whitespace-split; overlap is the multiset intersection size. precision =
    overlap / #pred words, recall = overlap / #target words, F1 their harmonic mean (0 when
    both are 0). An empty prediction has precision 0 (and recall 0), except that an empty
    prediction for an empty target is an exact match (1, 1, 1).
    """
    pred_words, target_words = Counter(pred.split()), Counter(target.split())
    n_pred, n_target = sum(pred_words.values()), sum(target_words.values())
    if n_pred == 0 and n_target == 0:
        return 1.0, 1.0, 1.0
    overlap = sum((pred_words & target_words).values())
    precision = overlap / n_pred if n_pred else 0.0
    recall = overlap / n_target if n_target else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def meteor(pred: str, target: str, *, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5) -> float:
    """METEOR (Banerjee & Lavie 2005) with exact unigram matching, nltk's parameters.

    Align hypothesis words to reference words one to one (each hypothesis word, in order, takes the
    earliest unused identical reference word); m matches, P = m / |hyp|, R = m / |ref|,
    F = P R / (alpha P + (1 - alpha) R), chunks = runs of matches adjacent in both texts,
    penalty = gamma (chunks / m)^beta, score = F (1 - penalty). No stemming or synonym stages: they
    need WordNet, which a machine without internet cannot fetch; on texts whose words match
    exactly the value is the standard METEOR. Worked example: hyp "the cat sat", ref "the cat
    sat down": m = 3, P = 1, R = 0.75, F = 0.75 / (0.9 + 0.075) = 0.76923, one chunk ->
    penalty 0.5 (1/3)^3 = 0.018519, score 0.75499.
    """
    hyp, ref = pred.split(), target.split()
    if not hyp or not ref:
        return 1.0 if hyp == ref else 0.0
    used: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for i, word in enumerate(hyp):
        j = next((j for j, r in enumerate(ref) if r == word and j not in used), None)
        if j is not None:
            used.add(j)
            pairs.append((i, j))
    m = len(pairs)
    if m == 0:
        return 0.0
    precision, recall = m / len(hyp), m / len(ref)
    fmean = precision * recall / (alpha * precision + (1 - alpha) * recall)
    chunks = 1 + sum(1 for (i0, j0), (i1, j1) in zip(pairs, pairs[1:]) if not (i1 == i0 + 1 and j1 == j0 + 1))
    return fmean * (1 - gamma * (chunks / m) ** beta)


class OCRMetric(torchmetrics.Metric):
    """Mean normalized edit distance, bag-of-words precision / recall / F1 and METEOR per item."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("edit_sum", "precision_sum", "recall_sum", "f1_sum", "meteor_sum", "total"):
            self.add_state(name, default=_zero(), dist_reduce_fx="sum")

    def update(self, completions: Sequence[str], records: Sequence[Mapping]) -> None:
        _check_lengths(completions, records)
        for completion, record in zip(completions, records):
            pred = completion if isinstance(completion, str) else ""
            target = str(record["target"])
            precision, recall, f1 = bag_of_words_prf(pred, target)
            self.edit_sum += normalized_edit_distance(pred, target)
            self.precision_sum += precision
            self.recall_sum += recall
            self.f1_sum += f1
            self.meteor_sum += meteor(pred, target)
            self.total += 1.0

    def compute(self) -> dict[str, float]:
        return {
            "edit_distance": _mean(self.edit_sum, self.total),
            "precision": _mean(self.precision_sum, self.total),
            "recall": _mean(self.recall_sum, self.total),
            "f1": _mean(self.f1_sum, self.total),
            "meteor": _mean(self.meteor_sum, self.total),
        }


class ShortTextBLEUScore(BLEUScore):
    """Corpus BLEU-4 that stays informative on short texts.

    Accumulation (whitespace tokenization, clipped n-gram counts, closest reference length) is
    torchmetrics' ``BLEUScore(n_gram=4, smooth=True)``; only the final formula differs, in two
    documented ways:

    1. **Smoothing** (Lin & Och 2004 add-one, the same as torchmetrics' ``smooth=True``):
       ``p_1 = m_1 / c_1`` and ``p_n = (m_n + 1) / (c_n + 1)`` for n >= 2. torchmetrics returns
       0 as soon as any order has no match, which makes its smoothing a no-op exactly where it
       is needed (short answers with no matching 4-gram); here smoothing applies regardless.
       BLEU is 0 only when no unigram matches.
    2. **Order reduction**: the order is ``n = min(4, longest order for which the predictions
       contain any n-gram)``, with uniform weights ``1/n``. So a corpus whose predictions are all
       shorter than 4 words gets BLEU-n of the orders it has instead of a meaningless 0.

    When all four orders have matches, the value equals ``BLEUScore(n_gram=4, smooth=True)``.
    Brevity penalty as usual: ``exp(1 - r / c)`` if ``c <= r``.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("n_gram", 4)
        kwargs.setdefault("smooth", True)
        super().__init__(**kwargs)

    def compute(self) -> torch.Tensor:
        numerator = self.numerator.double()
        denominator = self.denominator.double()
        c, r = float(self.preds_len), float(self.target_len)
        zero = torch.tensor(0.0, dtype=torch.float64)
        if c <= 0 or float(denominator[0]) <= 0 or float(numerator[0]) <= 0:
            return zero
        orders = int((denominator > 0).nonzero().max()) + 1
        precisions = [float(numerator[0] / denominator[0])]
        for n in range(1, orders):
            m, d = float(numerator[n]), float(denominator[n])
            precisions.append((m + 1.0) / (d + 1.0) if self.smooth else m / d)
        if min(precisions) <= 0:
            return zero
        log_mean = sum(math.log(p) for p in precisions) / orders
        brevity = 1.0 if c > r else math.exp(1.0 - r / c)
        return torch.tensor(brevity * math.exp(log_mean), dtype=torch.float64)


class CountingMetric(torchmetrics.Metric):
    """Exact accuracy, mean absolute error and parse rate of counting answers."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("correct", "abs_error_sum", "parsed", "total"):
            self.add_state(name, default=_zero(), dist_reduce_fx="sum")

    def update(self, completions: Sequence[str], records: Sequence[Mapping]) -> None:
        _check_lengths(completions, records)
        for completion, record in zip(completions, records):
            pred = parse_count(completion)
            target = int(record["target"])
            value = 0 if pred is None else pred
            self.correct += float(pred is not None and pred == target)
            self.abs_error_sum += float(abs(value - target))
            self.parsed += float(pred is not None)
            self.total += 1.0

    def compute(self) -> dict[str, float]:
        return {
            "accuracy": _mean(self.correct, self.total),
            "mae": _mean(self.abs_error_sum, self.total),
            "parse_rate": _mean(self.parsed, self.total),
        }


class TaskMetrics:
    """All evaluation metrics of one task behind ``update`` / ``compute`` / ``reset``.

    >>> m = TaskMetrics("counting")
    >>> m.update(["3", "four"], [{"target": 3}, {"target": 5}])
    >>> m.compute()
    {'accuracy': 0.5, 'mae': 0.5, 'parse_rate': 1.0}
    """

    def __init__(self, task: str, box_format: str = "norm2", *, box_frame: str = "original", sync_on_compute: bool = True):
        """``sync_on_compute=False``: one process scores the whole set (no sum over ranks)."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
        self.task = task
        self.box_format = box_format
        self._bleu: ShortTextBLEUScore | None = None
        sync = {"sync_on_compute": sync_on_compute}
        if task == "grounding":
            self._main: torchmetrics.Metric = GroundingMetric(box_format=box_format, box_frame=box_frame, **sync)
        elif task == "ocr":
            self._main = OCRMetric(**sync)
            self._bleu = ShortTextBLEUScore(**sync)
        else:
            self._main = CountingMetric(**sync)

    @property
    def metrics(self) -> list[torchmetrics.Metric]:
        """The underlying torchmetrics objects (e.g. to move them to a device)."""
        return [m for m in (self._main, self._bleu) if m is not None]

    def update(self, completions: Sequence[str], records: Sequence[Mapping]) -> None:
        completions = list(completions)
        records = list(records)
        _check_lengths(completions, records)
        if not completions:
            return
        self._main.update(completions, records)
        if self._bleu is not None:
            preds = [c if isinstance(c, str) else "" for c in completions]
            self._bleu.update(preds, [[str(r["target"])] for r in records])

    def compute(self) -> dict[str, float]:
        if float(self._main.total) == 0:
            keys = {
                "grounding": ["acc@0.5", "miou", "parse_rate"],
                "ocr": ["edit_distance", "precision", "recall", "f1", "meteor", "bleu"],
                "counting": ["accuracy", "mae", "parse_rate"],
            }[self.task]
            return {k: math.nan for k in keys}
        values = {k: float(v) for k, v in self._main.compute().items()}
        if self._bleu is not None:
            values["bleu"] = float(self._bleu.compute())
        return values

    def reset(self) -> None:
        for metric in self.metrics:
            metric.reset()

    def __repr__(self) -> str:
        return f"TaskMetrics(task={self.task!r}, box_format={self.box_format!r})"
