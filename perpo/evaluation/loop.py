"""Greedy decoding on a split, scored by the task's torchmetrics, plus an image-use check.

``image_dependence`` answers the paper's image-unconditional question in miniature: the mean
answer NLL with the true images vs with images shuffled across records. A model that ignores
the image has the same NLL for both, and preference training can then only move its guess.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from perpo.boxes import read_box
from perpo.evaluation.metrics import TaskMetrics
from perpo.listbatch.logps import answer_logps
from perpo.listbatch.naive import ground_truth_batch
from perpo.prompting import ChatFamily, TaskSpec
from perpo.sampling.generation import decode, generate


def _batches(records: Sequence, size: int):
    for start in range(0, len(records), size):
        yield [records[i] for i in range(start, min(start + size, len(records)))]


@torch.no_grad()
def greedy_answers(
    model: torch.nn.Module, processor: Any, family: ChatFamily, task: TaskSpec, records: Sequence, *, synced_gpus: bool = False
) -> list[str]:
    """The model's greedy answer text for each record (evaluation and validation)."""
    prompts = [family.prompt_text(r, task) for r in records]
    out = generate(
        model, processor, prompts, [r["image"] for r in records],
        do_sample=False, max_new_tokens=task.max_new_tokens, synced_gpus=synced_gpus,
    )  # fmt: skip
    return [decode(processor, row[0]) for row in out]


def prediction_row(record, text: str, task: TaskSpec, family: ChatFamily, score: float | None = None) -> dict[str, Any]:
    """One line of predictions.jsonl: ``id``, ``prediction`` (the answer text) and ``score``, the
    item's own value of the task's metric as :meth:`TaskMetrics.item_scores` reads it (IoU for
    grounding, 1 - edit distance for OCR, 1 / 0 for an exact count or the right yes / no), which
    paired statistics over items (``perpo.reporting.intervals``) read; ``score`` is computed here
    unless given. For grounding, the box is also given in the original image's frame, whatever the
    model's frame and format, so that external tools (lmms-eval, pycocotools) can score it: ``box``
    normalized xyxy in [0, 1], ``box_pixels`` in pixels of the original image (None when the answer
    holds no box)."""
    if score is None:
        metrics = TaskMetrics(task.name, box_format=family.box_format_name, box_frame=family.box_frame, sync_on_compute=False)
        score = metrics.item_scores([text], [record])[0]
    row: dict[str, Any] = {"id": record["id"], "prediction": text, "score": float(score)}
    if task.name == "grounding":
        box = read_box(text, record, family.box_format, family.box_frame)
        w, h = record.get("width"), record.get("height")
        row["box"] = box
        row["box_pixels"] = None if box is None or not (w and h) else [box[0] * w, box[1] * h, box[2] * w, box[3] * h]
        row["width"], row["height"] = w, h
    return row


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    processor: Any,
    family: ChatFamily,
    task: TaskSpec,
    records: Sequence,
    *,
    batch_size: int = 64,
    desc: str = "evaluate",
    return_predictions: bool = False,
) -> dict[str, Any]:
    # the whole set in this process: no sum over ranks (rank 0 evaluates alone after training)
    metrics = TaskMetrics(task.name, box_format=family.box_format_name, box_frame=family.box_frame, sync_on_compute=False)
    predictions = []
    with tqdm(total=len(records), desc=desc, unit="item", dynamic_ncols=True) as bar:
        for batch in _batches(records, batch_size):
            texts = greedy_answers(model, processor, family, task, batch)
            metrics.update(texts, batch)
            if return_predictions:
                scores = metrics.item_scores(texts, batch)
                predictions += [prediction_row(r, t, task, family, s) for r, t, s in zip(batch, texts, scores)]
            bar.update(len(batch))
    result: dict[str, Any] = metrics.compute()
    if return_predictions:
        result["predictions"] = predictions
    return result


@torch.no_grad()
def image_dependence(
    model: torch.nn.Module,
    processor: Any,
    family: ChatFamily,
    task: TaskSpec,
    records: Sequence,
    *,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Mean ground-truth answer NLL per token with true images and with shuffled images."""
    was_training = model.training
    model.eval()
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    totals = {"true": [0.0, 0], "shuffled": [0.0, 0]}
    for start in range(0, len(records), batch_size):
        idx = list(range(start, min(start + batch_size, len(records))))
        batch = [records[i] for i in idx]
        for name, images in (
            ("true", [r["image"] for r in batch]),
            ("shuffled", [records[order[i]]["image"] for i in idx]),
        ):
            lb = ground_truth_batch(processor, family, task, batch, images).to(next(model.parameters()).device)
            lp = answer_logps(model, lb)
            totals[name][0] += float(-lp.sum.sum())
            totals[name][1] += int(lp.num_tokens.sum())
    model.train(was_training)
    return {f"nll_{k}_images": v[0] / max(v[1], 1) for k, v in totals.items()}


@torch.no_grad()
def best_of_n(
    model: torch.nn.Module,
    processor: Any,
    family: ChatFamily,
    task: TaskSpec,
    records: Sequence,
    reward_fn,
    *,
    n: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    threshold: float | None = None,
) -> dict[str, float]:
    """The best-of-N oracle: sample N answers per record, keep the best by the task reward.

    ``best_of_n_reward``: mean over records of the best reward; with ``threshold`` (grounding's
    IoU 0.5) also ``best_of_n_acc@<threshold>``: the fraction whose best answer reaches it -- the
    paper's list-size figure plots this against N (what a perfect picker of the model's own
    samples would score). Each record's samples come from its own seed.
    """
    from perpo.rewards.scored_lists import decode_and_score
    from perpo.sampling.generation import generate, record_seed

    best: list[float] = []
    for batch in _batches(records, batch_size):
        prompts = [family.prompt_text(r, task) for r in batch]
        answers = generate(
            model, processor, prompts, [r["image"] for r in batch], num_return_sequences=n, temperature=temperature,
            top_p=top_p, max_new_tokens=task.max_new_tokens, row_seeds=[record_seed(seed, -1, str(r["id"])) for r in batch],
        )  # fmt: skip
        best += decode_and_score(reward_fn, batch, answers, processor).rewards.max(dim=1).values.tolist()
    out = {"best_of_n_reward": sum(best) / max(len(best), 1), "best_of_n_size": float(n)}
    if threshold is not None:
        out[f"best_of_n_acc@{threshold}"] = sum(b >= threshold for b in best) / max(len(best), 1)
    return out


def uses_image(metrics: dict, min_gain: float = 0.02) -> bool:
    """True when true images lower the answer NLL by at least ``min_gain`` (relative)."""
    true, shuffled = metrics["nll_true_images"], metrics["nll_shuffled_images"]
    return shuffled - true >= min_gain * shuffled
