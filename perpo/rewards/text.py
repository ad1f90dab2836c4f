"""OCR rewards: character-level similarity to the true text."""

from __future__ import annotations

from collections.abc import Mapping

from perpo.answers import edit_distance, normalized_edit_distance
from perpo.rewards.registry import register_reward

__all__ = ["edit_distance", "normalized_edit_distance", "edit"]


@register_reward("edit", tasks=("ocr",))
def edit(completion: str, record: Mapping) -> float | None:
    """``1 - normalized edit distance`` to ``record["target"]``.

    Both empty -> 1.0; an empty completion with a nonempty target -> 0.0 (it parsed, it is just
    wrong). Only a non-string completion gives ``None``.
    """
    if not isinstance(completion, str):
        return None
    return 1.0 - normalized_edit_distance(completion, str(record["target"]))
