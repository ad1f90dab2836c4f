"""The existence probe's reward: the yes / no an answer states against the true one.

Reads answers exactly as :class:`perpo.evaluation.metrics.ExistenceMetric`'s ``accuracy`` does
(:func:`perpo.answers.parse_yes_no`), so the mean reward of greedy answers is that accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping

from perpo.answers import parse_yes_no
from perpo.rewards.registry import register_reward

__all__ = ["parse_yes_no", "yes_no"]


@register_reward("yes_no", tasks=("existence",))
def yes_no(completion: str, record: Mapping) -> float | None:
    """1.0 if the stated yes / no equals ``record["target"]``, else 0.0; ``None`` when the answer
    states neither."""
    pred = parse_yes_no(completion)
    if pred is None:
        return None
    return 1.0 if pred == str(record["target"]).strip().lower() else 0.0
