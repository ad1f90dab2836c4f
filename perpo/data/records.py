"""The record schema shared by synthetic generators and real-data adapters.

A record is one prompt with its ground truth (see docs/ARCHITECTURE.md):

====== ============================================= =========================================
column type                                          meaning
====== ============================================= =========================================
id     string                                        unique id
task   string                                        one of :data:`TASKS`
image  ``datasets.Image`` (PIL on access)            RGB image
prompt string                                        referring expression / noun / ``""`` /
                                                     the object asked about
target grounding: 4 x float32, ocr: string,          ground truth; boxes are normalized xyxy
       counting: int32, existence: "yes" / "no"      in [0, 1]
width  int32                                         image width in pixels
height int32                                         image height in pixels
====== ============================================= =========================================
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import datasets

TASKS: tuple[str, ...] = ("grounding", "ocr", "counting", "existence")

#: The answers of an ``existence`` record (a POPE-style probe: "Is there a red circle in the image?").
YES_NO: tuple[str, str] = ("yes", "no")

COLUMNS: tuple[str, ...] = ("id", "task", "image", "prompt", "target", "width", "height")


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")


def _box_feature() -> Any:
    # datasets >= 4 has List(feature, length); older versions only Sequence.
    if hasattr(datasets, "List"):
        return datasets.List(datasets.Value("float32"), length=4)
    return datasets.Sequence(datasets.Value("float32"), length=4)  # pragma: no cover


def features_for(task: str) -> datasets.Features:
    """The ``datasets.Features`` of a record of ``task``."""
    check_task(task)
    target = {
        "grounding": _box_feature(),
        "ocr": datasets.Value("string"),
        "counting": datasets.Value("int32"),
        "existence": datasets.Value("string"),
    }[task]
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "task": datasets.Value("string"),
            "image": datasets.Image(),
            "prompt": datasets.Value("string"),
            "target": target,
            "width": datasets.Value("int32"),
            "height": datasets.Value("int32"),
        }
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _image_problem(image: Any) -> str | None:
    if image is None:
        return "missing image"
    if isinstance(image, Mapping):  # datasets.Image(decode=False) form: {"bytes", "path"}
        if image.get("bytes"):
            return None
        if image.get("path"):
            return None
        return "empty image (no bytes and no path)"
    size = getattr(image, "size", None)
    if isinstance(size, tuple) and len(size) == 2:
        if size[0] <= 0 or size[1] <= 0:
            return f"empty image of size {size}"
        return None
    if isinstance(image, (bytes, bytearray)):
        return None if len(image) else "empty image (0 bytes)"
    if isinstance(image, str):
        return None if image else "empty image path"
    return f"unusable image of type {type(image).__name__}"


def _grounding_problem(target: Any) -> str | None:
    if isinstance(target, (str, bytes)) or not hasattr(target, "__len__"):
        return f"grounding target is not a list of 4 numbers: {target!r}"
    values = list(target)
    if len(values) != 4:
        return f"grounding target has {len(values)} values, expected 4"
    if not all(_is_real(v) for v in values):
        return f"grounding target has non-numeric values: {values!r}"
    if not all(math.isfinite(float(v)) for v in values):
        return f"grounding target has non-finite values: {values!r}"
    x1, y1, x2, y2 = (float(v) for v in values)
    if min(x1, y1, x2, y2) < 0.0 or max(x1, y1, x2, y2) > 1.0:
        return f"grounding box outside [0, 1]: {values!r}"
    if x2 <= x1 or y2 <= y1:
        return f"degenerate grounding box (need x2 > x1 and y2 > y1): {values!r}"
    return None


def validate_record(record: Mapping[str, Any]) -> str | None:
    """Why ``record`` is unusable, or ``None`` when it is fine.

    Checks: all columns present, known task, a non-empty image, positive width/height (and,
    for a decoded PIL image, that they match its size), a string prompt (non-empty except
    for OCR), and a task-specific target: 4 finite numbers in [0, 1] with x2 > x1 and
    y2 > y1 (grounding), non-empty text (ocr), a non-negative integer (counting), ``"yes"`` or
    ``"no"`` (existence).
    """
    if not isinstance(record, Mapping):
        return f"record is not a mapping but {type(record).__name__}"
    missing = [c for c in COLUMNS if c not in record]
    if missing:
        return f"missing column(s): {', '.join(missing)}"
    task = record["task"]
    if task not in TASKS:
        return f"unknown task {task!r} (valid: {', '.join(TASKS)})"

    problem = _image_problem(record["image"])
    if problem:
        return problem
    width, height = record["width"], record["height"]
    for name, value in (("width", width), ("height", height)):
        if not _is_int(value):
            return f"{name} is not an integer: {value!r}"
        if value <= 0:
            return f"{name} must be > 0, got {value}"
    size = getattr(record["image"], "size", None)
    if isinstance(size, tuple) and len(size) == 2 and tuple(size) != (width, height):
        return f"image size {tuple(size)} does not match width/height ({width}, {height})"

    prompt = record["prompt"]
    if not isinstance(prompt, str):
        return f"prompt is not a string: {prompt!r}"
    if task != "ocr" and not prompt.strip():
        return f"empty prompt for task {task!r}"

    target = record["target"]
    if task == "grounding":
        return _grounding_problem(target)
    if task == "ocr":
        if not isinstance(target, str):
            return f"ocr target is not a string: {target!r}"
        if not target.strip():
            return "empty ocr text"
        return None
    if task == "existence":
        if target not in YES_NO:
            return f"existence target must be 'yes' or 'no', got {target!r}"
        return None
    # counting
    if not _is_int(target):
        return f"counting target is not an integer: {target!r}"
    if target < 0:
        return f"negative count: {target}"
    return None
