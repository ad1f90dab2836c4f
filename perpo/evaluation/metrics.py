"""Evaluation metrics per task, as torchmetrics objects (greedy-decoding evaluation uses these).

``TaskMetrics(task)`` is the one entry point, a ``torch.nn.Module``: ``update(completions,
records)``, ``compute()`` -> ``dict[str, float]`` (plain python floats), ``reset()``. As an
attribute of a LightningModule it is a submodule, so ``module.to(device)`` moves its metric
states. Underneath, every value is a ``torchmetrics.Metric`` whose states are float64 sums with
``dist_reduce_fx="sum"``: the values are correct under DDP (``compute`` first sums the states
over the processes, then divides -- a process that scored no item still joins the sum) and
updating over several batches equals one update over their concatenation.

Metric names per task:

- grounding: ``acc@0.5`` (share of items with IoU >= 0.5), ``miou`` (mean IoU), ``parse_rate``;
  an unparseable answer counts as IoU 0.
- ocr: the paper's columns, per page as Nougat computes them (Blecher et al. 2023,
  facebookresearch/nougat ``nougat/metrics.py`` ``compute_metrics``; Fox and Vary follow it),
  then the mean over the pages Nougat scores (see :func:`nougat_page_metrics`):
  ``edit_distance`` (lower is better), ``precision``, ``recall``, ``f1`` (over the SETS of
  words), ``bleu`` (nltk sentence BLEU-4), ``meteor`` (nltk METEOR with WordNet synonyms; only
  where nltk finds its WordNet data, see :func:`find_wordnet`). Always present as well:
  ``meteor_nosyn`` (nltk METEOR with the synonym stage off: exact and Porter-stem matches; NOT
  the paper's METEOR), ``scored_rate`` (share of pages Nougat scores: both texts at least 4
  characters) and ``reward_edit_distance`` (mean over every page of the ``edit`` reward's
  distance, :func:`perpo.answers.normalized_edit_distance`: 1 - the mean edit reward).
- counting: ``accuracy`` (exact), ``mae``, ``parse_rate``; an unparsed answer (no count, or a
  negative number, :func:`perpo.answers.parse_count`) is wrong and has absolute error
  ``max(target, 1)`` (see :class:`CountingMetric`).

- existence (the POPE-style probe): ``accuracy``, ``yes_rate`` (share of all answers read as
  yes: above the share of true yes, 0.5 on the synthetic probe, the model says objects are
  there that are not), ``parse_rate``, all with :func:`perpo.answers.parse_yes_no`, which is
  NOT POPE's reading (an answer stating neither yes nor no is unparsed and wrong); beside them
  POPE's own columns with POPE's own reading (:func:`perpo.answers.pope_yes_no`, RUCAIBox/POPE
  ``evaluate.py``: every answer is read, as no when its first sentence has the word ``No`` /
  ``no`` / ``not``, else as yes): ``pope_accuracy``, ``pope_f1`` (yes is the positive class),
  ``pope_yes_ratio``. See :class:`ExistenceMetric`.

Per item, :meth:`TaskMetrics.item_scores` gives the score whose mean is one of these values
(:data:`ITEM_SCORES`): IoU (mean: ``miou``; ``>= 0.5``: ``acc@0.5``), 1 - the edit reward's
distance (mean: 1 - ``reward_edit_distance``), exactness (mean: counting / existence
``accuracy``). Paired statistics over items (``perpo.reporting.intervals``) read them from
``predictions.jsonl``.

Means over zero items (no item at all, or, for the Nougat columns, no page long enough) are
``nan``, beside ``scored_rate`` / the counts that say why.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import nltk
import torch
import torchmetrics
from nltk.stem.porter import PorterStemmer

from perpo.answers import edit_distance, normalized_edit_distance, parse_box, parse_count, parse_yes_no, pope_yes_no
from perpo.boxes import box_iou

__all__ = [
    "TASKS",
    "GroundingMetric",
    "OCRMetric",
    "CountingMetric",
    "ExistenceMetric",
    "ITEM_SCORES",
    "find_wordnet",
    "nougat_page_metrics",
    "TaskMetrics",
]

TASKS = ("grounding", "ocr", "counting", "existence")

#: task -> (name of the per-item score, the metrics that are its mean over items): see
#: :meth:`TaskMetrics.item_scores`. ``acc@0.5`` is the mean of ``iou >= 0.5``.
ITEM_SCORES: dict[str, tuple[str, str]] = {
    "grounding": ("iou", "miou"),
    "ocr": ("edit_similarity", "1 - reward_edit_distance"),
    "counting": ("exact", "accuracy"),
    "existence": ("exact", "accuracy"),
}

# IoU values within this of the threshold count as hits (guards against float noise of boxes
# parsed from decimal text, e.g. an IoU that is 0.5 on paper computing as 0.49999999999).
_IOU_EPS = 1e-9

# Nougat's compute_metrics(pred, gt, minlen=4) scores no page whose prediction or ground truth
# is shorter than 4 characters; such pages are left out of every mean.
NOUGAT_MIN_CHARS = 4


def _zero() -> torch.Tensor:
    return torch.tensor(0.0, dtype=torch.float64)


def _mean(total: torch.Tensor, n: torch.Tensor) -> float:
    n = float(n)
    return float(total) / n if n > 0 else math.nan


def _check_lengths(completions: Sequence, records: Sequence) -> None:
    if len(completions) != len(records):
        raise ValueError(f"got {len(completions)} completions for {len(records)} records")


class _SumMetric(torchmetrics.Metric):
    """A metric whose states are float64 sums over items, reduced by summing over processes.

    ``.to(device)`` moves the states; a dtype cast (``.to(torch.bfloat16)``, which a module-wide
    cast reaches) does not change them: a bfloat16 sum stops counting at 256.
    """

    full_state_update = False

    def _add_sums(self, *names: str) -> None:
        for name in names:
            self.add_state(name, default=_zero(), dist_reduce_fx="sum")

    def _apply(self, fn, exclude_state=""):
        def move_only(t: torch.Tensor) -> torch.Tensor:
            target = fn(torch.empty(0, dtype=t.dtype, device=t.device)).device
            return t.to(target)

        return super()._apply(move_only, exclude_state)


class GroundingMetric(_SumMetric):
    """Acc@threshold, mean IoU and parse rate of box answers against ``record["target"]``."""

    higher_is_better = True

    def __init__(self, box_format: str = "norm2", threshold: float = 0.5, box_frame: str = "original", **kwargs):
        super().__init__(**kwargs)
        self.box_format = box_format
        self.box_frame = box_frame
        self.threshold = threshold
        self._add_sums("hits", "iou_sum", "parsed", "total")

    def item_score(self, completion: str, record: Mapping) -> float:
        """The item's IoU (0 for an unparsed answer)."""
        box = parse_box(completion, record, self.box_format, self.box_frame)
        return 0.0 if box is None else box_iou(box, [float(v) for v in record["target"]])

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


# -- OCR: Nougat's per-page metrics --------------------------------------------------------------


class _NoSynonyms:
    """A WordNet stand-in without synsets: nltk's METEOR then matches exact words and stems only."""

    def synsets(self, word: str) -> list:
        return []


class _CachedStemmer:
    """nltk's Porter stemmer with a cache (the same stems; a page repeats most of its words)."""

    def __init__(self) -> None:
        self.stem = functools.lru_cache(maxsize=1 << 16)(PorterStemmer().stem)


_STEMMER = _CachedStemmer()


@functools.lru_cache(maxsize=1)
def find_wordnet() -> Any | None:
    """nltk's WordNet reader when nltk finds its ``wordnet`` data, else ``None``.

    WordNet is not on PyPI in a form nltk reads (checked: no package ships nltk's ``wordnet``
    corpus; ``nltk.download`` needs the internet). Where it is installed (``python -m
    nltk.downloader wordnet``), ``meteor`` is computed as Nougat does.
    """
    try:
        nltk.corpus.wordnet.ensure_loaded()
    except LookupError:
        return None
    return nltk.corpus.wordnet


def _word_prf(reference: set[str], hypothesis: set[str]) -> tuple[float, float, float]:
    """nltk.metrics.scores precision / recall / f_measure (alpha 0.5) of two word SETS, with the
    cases nltk returns None for (Nougat would then fail to average) scored 0: a prediction or a
    truth without any word."""
    overlap = len(reference & hypothesis)
    precision = overlap / len(hypothesis) if hypothesis else 0.0
    recall = overlap / len(reference) if reference else 0.0
    if precision == 0 or recall == 0:
        return precision, recall, 0.0
    return precision, recall, 1.0 / (0.5 / precision + 0.5 / recall)


def nougat_page_metrics(pred: str, gt: str, *, wordnet: Any | None = None, min_chars: int = NOUGAT_MIN_CHARS) -> dict[str, float] | None:
    """The paper's OCR metrics of one page, as Nougat's ``compute_metrics(pred, gt, minlen=4)``
    (facebookresearch/nougat, ``nougat/metrics.py``) defines them; ``None`` for a page Nougat
    does not score (``len(pred) < 4`` or ``len(gt) < 4`` characters, raw strings).

    - ``edit_distance``: Levenshtein distance of the raw strings / ``max(len(pred), len(gt))``
      (nltk's ``edit_distance``; computed here with rapidfuzz, the same value);
    - words: ``str.split()``; ``precision`` = |gt words ∩ pred words| / |pred words|,
      ``recall`` = |∩| / |gt words|, ``f1`` their harmonic mean, over the SETS of words
      (nltk.metrics.scores); a text without words scores 0 (nltk: None);
    - ``bleu``: ``nltk.translate.bleu([gt_words], pred_words)``: sentence BLEU-4, uniform
      weights, no smoothing (0 when no 4-gram matches);
    - ``meteor_nosyn``: ``nltk.translate.meteor([gt_words], pred_words)`` with the WordNet
      synonym stage off; ``meteor``: the same with ``wordnet`` (nltk's reader), only when given.
    """
    if len(pred) < min_chars or len(gt) < min_chars:
        return None
    reference, hypothesis = gt.split(), pred.split()
    precision, recall, f1 = _word_prf(set(reference), set(hypothesis))
    with warnings.catch_warnings():  # nltk warns on every page without a matching 4-gram
        warnings.simplefilter("ignore", UserWarning)
        bleu = float(nltk.translate.bleu([reference], hypothesis))
    out = {
        "edit_distance": edit_distance(pred, gt) / max(len(pred), len(gt)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "bleu": bleu,
        "meteor_nosyn": float(nltk.translate.meteor([reference], hypothesis, stemmer=_STEMMER, wordnet=_NoSynonyms())),
    }
    if wordnet is not None:
        out["meteor"] = float(nltk.translate.meteor([reference], hypothesis, stemmer=_STEMMER, wordnet=wordnet))
    return out


_NOUGAT_KEYS = ("edit_distance", "precision", "recall", "f1", "bleu", "meteor", "meteor_nosyn")


class OCRMetric(_SumMetric):
    """The paper's OCR columns as Nougat computes them (:func:`nougat_page_metrics`), averaged
    over the pages Nougat scores, with ``scored_rate`` and ``reward_edit_distance`` over every page.

    ``wordnet``: ``"auto"`` (:func:`find_wordnet`), ``None`` (no ``meteor``), or a reader.
    A non-string completion is read as ``""``.
    """

    def __init__(self, wordnet: Any = "auto", min_chars: int = NOUGAT_MIN_CHARS, **kwargs):
        super().__init__(**kwargs)
        self.wordnet = find_wordnet() if wordnet == "auto" else wordnet
        self.min_chars = int(min_chars)
        self.value_names = tuple(k for k in _NOUGAT_KEYS if k != "meteor" or self.wordnet is not None)
        self._add_sums(*(f"{k}_sum" for k in self.value_names), "scored", "reward_edit_sum", "total")

    def update(self, completions: Sequence[str], records: Sequence[Mapping]) -> None:
        _check_lengths(completions, records)
        for completion, record in zip(completions, records):
            pred = completion if isinstance(completion, str) else ""
            target = str(record["target"])
            page = nougat_page_metrics(pred, target, wordnet=self.wordnet, min_chars=self.min_chars)
            if page is not None:
                for key in self.value_names:
                    state = f"{key}_sum"
                    setattr(self, state, getattr(self, state) + page[key])
                self.scored += 1.0
            self.reward_edit_sum += normalized_edit_distance(pred, target)
            self.total += 1.0

    def item_score(self, completion: str, record: Mapping) -> float:
        """1 - the ``edit`` reward's normalized distance (every page, short ones too)."""
        pred = completion if isinstance(completion, str) else ""
        return 1.0 - normalized_edit_distance(pred, str(record["target"]))

    def compute(self) -> dict[str, float]:
        values = {key: _mean(getattr(self, f"{key}_sum"), self.scored) for key in self.value_names}
        values["scored_rate"] = _mean(self.scored, self.total)
        values["reward_edit_distance"] = _mean(self.reward_edit_sum, self.total)
        return values


class CountingMetric(_SumMetric):
    """Exact accuracy, mean absolute error and parse rate of counting answers.

    Every item counts in every value. An unparsed answer (no count, or a negative number:
    :func:`perpo.answers.parse_count`) is wrong for ``accuracy`` and has absolute error
    ``max(target, 1)`` in ``mae``: the error of answering 0 when the target is positive, and 1
    for a target of 0, so it is never an error of 0. It is the smallest error the ``count``
    reward scores 0, the reward an unparsed answer gets (:mod:`perpo.rewards.counting`).
    Example: targets 3, 0 with answers "no idea", "none": accuracy 1/2, mae (3 + 0) / 2.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._add_sums("correct", "abs_error_sum", "parsed", "total")

    def update(self, completions: Sequence[str], records: Sequence[Mapping]) -> None:
        _check_lengths(completions, records)
        for completion, record in zip(completions, records):
            pred = parse_count(completion)
            target = int(record["target"])
            if target < 0:
                raise ValueError(f"a count target cannot be negative: {target} (record {record.get('id', '?')})")
            error = max(target, 1) if pred is None else abs(pred - target)
            self.correct += float(pred is not None and pred == target)
            self.abs_error_sum += float(error)
            self.parsed += float(pred is not None)
            self.total += 1.0

    def item_score(self, completion: str, record: Mapping) -> float:
        """1.0 for the exact count, else 0.0 (unparsed: 0.0)."""
        pred = parse_count(completion)
        return float(pred is not None and pred == int(record["target"]))

    def compute(self) -> dict[str, float]:
        return {
            "accuracy": _mean(self.correct, self.total),
            "mae": _mean(self.abs_error_sum, self.total),
            "parse_rate": _mean(self.parsed, self.total),
        }


def _truth(record: Mapping) -> str:
    target = str(record["target"]).strip().lower()
    if target not in ("yes", "no"):
        raise ValueError(f"an existence target is 'yes' or 'no', got {record['target']!r} (record {record.get('id', '?')})")
    return target


class ExistenceMetric(_SumMetric):
    """The POPE-style existence probe: yes / no answers against ``record["target"]``.

    Ours (:func:`perpo.answers.parse_yes_no`; an answer stating neither is unparsed, wrong, and
    not a yes): ``accuracy``, ``yes_rate`` (answers read as yes / all answers), ``parse_rate``.
    POPE's (:func:`perpo.answers.pope_yes_no`, exactly its ``evaluate.py``: every answer is read,
    yes unless its first sentence holds the word No / no / not): ``pope_accuracy``, ``pope_f1``
    (yes = positive; ``nan`` where POPE's formula divides by zero), ``pope_yes_ratio``.
    Example: truths yes, no, no with answers "Yes.", "maybe", "No": accuracy 2/3, yes_rate 1/3,
    parse_rate 2/3; POPE reads "maybe" as yes: pope_accuracy 2/3, pope_yes_ratio 2/3.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._add_sums("correct", "said_yes", "parsed", "total", "pope_tp", "pope_fp", "pope_tn", "pope_fn")

    def item_score(self, completion: str, record: Mapping) -> float:
        """1.0 when the stated yes / no is the true one, else 0.0 (unparsed: 0.0)."""
        return float(parse_yes_no(completion) == _truth(record))

    def update(self, completions: Sequence[str], records: Sequence[Mapping]) -> None:
        _check_lengths(completions, records)
        for completion, record in zip(completions, records):
            truth = _truth(record)
            ours, pope = parse_yes_no(completion), pope_yes_no(completion)
            self.correct += float(ours == truth)
            self.said_yes += float(ours == "yes")
            self.parsed += float(ours is not None)
            self.total += 1.0
            state = {("yes", "yes"): "pope_tp", ("yes", "no"): "pope_fp", ("no", "no"): "pope_tn", ("no", "yes"): "pope_fn"}
            name = state[(pope, truth)]
            setattr(self, name, getattr(self, name) + 1.0)

    def compute(self) -> dict[str, float]:
        tp, fp, tn, fn = (float(getattr(self, f"pope_{k}")) for k in ("tp", "fp", "tn", "fn"))
        precision = tp / (tp + fp) if tp + fp else math.nan
        recall = tp / (tp + fn) if tp + fn else math.nan
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else math.nan
        return {
            "accuracy": _mean(self.correct, self.total),
            "yes_rate": _mean(self.said_yes, self.total),
            "parse_rate": _mean(self.parsed, self.total),
            "pope_accuracy": _mean(torch.tensor(tp + tn), self.total),
            "pope_f1": f1,
            "pope_yes_ratio": _mean(torch.tensor(tp + fp), self.total),
        }


class TaskMetrics(torch.nn.Module):
    """All evaluation metrics of one task behind ``update`` / ``compute`` / ``reset``.

    An ``nn.Module`` whose one child (``main``) is the task's torchmetrics metric, so a
    LightningModule holding it moves its states with ``.to(device)``.

    >>> m = TaskMetrics("counting")
    >>> m.update(["3", "four"], [{"target": 3}, {"target": 5}])
    >>> m.compute()
    {'accuracy': 0.5, 'mae': 0.5, 'parse_rate': 1.0}
    """

    def __init__(
        self, task: str, box_format: str = "norm2", *, box_frame: str = "original", sync_on_compute: bool = True, wordnet: Any = "auto"
    ):
        """``sync_on_compute=False``: one process scores the whole set (no sum over ranks).
        ``wordnet`` (OCR): see :class:`OCRMetric`."""
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
        self.task = task
        self.box_format = box_format
        sync = {"sync_on_compute": sync_on_compute}
        if task == "grounding":
            self.main: _SumMetric = GroundingMetric(box_format=box_format, box_frame=box_frame, **sync)
        elif task == "ocr":
            self.main = OCRMetric(wordnet=wordnet, **sync)
        elif task == "counting":
            self.main = CountingMetric(**sync)
        else:
            self.main = ExistenceMetric(**sync)

    @property
    def metrics(self) -> list[torchmetrics.Metric]:
        """The underlying torchmetrics objects."""
        return [self.main]

    def update(self, completions: Sequence[str], records: Sequence[Mapping]) -> None:
        completions = list(completions)
        records = list(records)
        _check_lengths(completions, records)
        if completions:
            self.main.update(completions, records)

    def item_scores(self, completions: Sequence[str], records: Sequence[Mapping]) -> list[float]:
        """One score per item, read as the metrics read it (states untouched): the IoU
        (grounding), 1 - the edit reward's distance (OCR), 1.0 / 0.0 for an exact count or the
        right yes / no (counting, existence). Their mean is :data:`ITEM_SCORES`' metric."""
        completions, records = list(completions), list(records)
        _check_lengths(completions, records)
        return [float(self.main.item_score(c, r)) for c, r in zip(completions, records)]

    def compute(self) -> dict[str, float]:
        """The task's values over every process's items: the metric's states are summed over the
        processes first (every process calls this, including one that scored nothing), then
        divided; ``nan`` where nothing was scored anywhere."""
        with warnings.catch_warnings():  # a process without items: torchmetrics warns, we know
            warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method.*")
            return {k: float(v) for k, v in self.main.compute().items()}

    def reset(self) -> None:
        self.main.reset()

    def forward(self, *args, **kwargs):
        raise TypeError("TaskMetrics is not called: use update(completions, records), then compute()")

    def extra_repr(self) -> str:
        return f"task={self.task!r}, box_format={self.box_format!r}"
