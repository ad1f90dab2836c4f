"""Counting rewards: the count the answer states (:func:`perpo.answers.parse_count`) against the
true count.

Both read answers exactly as :class:`perpo.evaluation.metrics.CountingMetric` does: number
words (``"twenty-one"``), thousands separators (``"1,000"``), ``"none"`` / ``"no circles"`` as 0.
An answer that states no count, or a negative number (no count can be negative), is ``None``:
the caller scores it 0, which is the reward of the error ``max(target, 1)`` that the metric's
MAE charges an unparsed answer.
"""

from __future__ import annotations

from collections.abc import Mapping

from perpo.answers import NUMBER_WORDS, parse_count
from perpo.rewards.registry import register_reward

__all__ = ["NUMBER_WORDS", "parse_count", "count", "count_exact"]


@register_reward("count", tasks=("counting",))
def count(completion: str, record: Mapping) -> float | None:
    """``max(0, 1 - |pred - target| / max(target, 1))``; ``None`` when the answer states no count."""
    pred = parse_count(completion)
    if pred is None:
        return None
    target = int(record["target"])
    return max(0.0, 1.0 - abs(pred - target) / max(target, 1))


@register_reward("count_exact", tasks=("counting",))
def count_exact(completion: str, record: Mapping) -> float | None:
    """1.0 if the stated count equals the target, else 0.0; ``None`` when the answer states no count."""
    pred = parse_count(completion)
    if pred is None:
        return None
    return 1.0 if pred == int(record["target"]) else 0.0
