"""Counting rewards: the first number in the answer against the true count."""

from __future__ import annotations

from collections.abc import Mapping

from perpo.answers import NUMBER_WORDS, parse_count
from perpo.rewards.registry import register_reward

__all__ = ["NUMBER_WORDS", "parse_count", "count", "count_exact"]


@register_reward("count", tasks=("counting",))
def count(completion: str, record: Mapping) -> float | None:
    """``max(0, 1 - |pred - target| / max(target, 1))``; ``None`` when no number is found."""
    pred = parse_count(completion)
    if pred is None:
        return None
    target = int(record["target"])
    return max(0.0, 1.0 - abs(pred - target) / max(target, 1))


@register_reward("count_exact", tasks=("counting",))
def count_exact(completion: str, record: Mapping) -> float | None:
    """1.0 if the first number equals the target, else 0.0; ``None`` when no number is found."""
    pred = parse_count(completion)
    if pred is None:
        return None
    return 1.0 if pred == int(record["target"]) else 0.0
