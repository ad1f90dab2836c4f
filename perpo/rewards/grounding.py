"""Grounding rewards: overlap of the parsed box with the true box."""

from __future__ import annotations

from collections.abc import Mapping

from perpo.answers import parse_box
from perpo.boxes import box_giou, box_iou
from perpo.rewards.registry import register_reward

__all__ = ["iou", "giou", "parse_box"]


def _target(record: Mapping) -> list[float]:
    return [float(v) for v in record["target"]]


@register_reward("iou", tasks=("grounding",))
def iou(completion: str, record: Mapping, box_format: str = "norm2", box_frame: str = "original") -> float | None:
    """IoU of the parsed box with ``record["target"]`` (normalized xyxy); ``None`` if unparseable."""
    box = parse_box(completion, record, box_format, box_frame)
    if box is None:
        return None
    return box_iou(box, _target(record))


@register_reward("giou", tasks=("grounding",))
def giou(completion: str, record: Mapping, box_format: str = "norm2", box_frame: str = "original") -> float | None:
    """``(GIoU + 1) / 2`` of the parsed box with the target, in [0, 1]; ``None`` if unparseable.

    Unlike IoU it still ranks non-overlapping boxes (closer is better).
    """
    box = parse_box(completion, record, box_format, box_frame)
    if box is None:
        return None
    return min(1.0, max(0.0, (box_giou(box, _target(record)) + 1.0) / 2.0))
