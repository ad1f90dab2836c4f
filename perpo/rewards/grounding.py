"""Grounding rewards: overlap of the parsed box with the true box."""

from __future__ import annotations

import functools
from collections.abc import Mapping

from perpo.boxes import box_space, BoxFormat, box_giou, box_iou, get_box_format
from perpo.rewards import register_reward

__all__ = ["iou", "giou", "parse_box"]


@functools.lru_cache(maxsize=None)
def _box_format(name: str) -> BoxFormat:
    return get_box_format(name)


def parse_box(completion: str, record: Mapping, box_format: str = "norm2") -> list[float] | None:
    """The normalized xyxy box in ``completion`` (read with ``box_format``), or ``None``."""
    fmt = _box_format(box_format)
    if not isinstance(completion, str):
        return None
    return fmt.parse(completion, *box_space(record))


def _target(record: Mapping) -> list[float]:
    return [float(v) for v in record["target"]]


@register_reward("iou", tasks=("grounding",))
def iou(completion: str, record: Mapping, box_format: str = "norm2") -> float | None:
    """IoU of the parsed box with ``record["target"]`` (normalized xyxy); ``None`` if unparseable."""
    box = parse_box(completion, record, box_format)
    if box is None:
        return None
    return box_iou(box, _target(record))


@register_reward("giou", tasks=("grounding",))
def giou(completion: str, record: Mapping, box_format: str = "norm2") -> float | None:
    """``(GIoU + 1) / 2`` of the parsed box with the target, in [0, 1]; ``None`` if unparseable.

    Unlike IoU it still ranks non-overlapping boxes (closer is better).
    """
    box = parse_box(completion, record, box_format)
    if box is None:
        return None
    return min(1.0, max(0.0, (box_giou(box, _target(record)) + 1.0) / 2.0))
