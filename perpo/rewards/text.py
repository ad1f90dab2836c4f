"""OCR rewards: character-level similarity to the true text."""

from __future__ import annotations

from collections.abc import Mapping

from perpo.rewards import register_reward

__all__ = ["edit_distance", "normalized_edit_distance", "edit"]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert / delete / substitute, each cost 1) between two strings.

    Plain O(len(a) * len(b)) dynamic programme with two rows; a shared prefix and suffix are
    stripped first, which makes near-correct OCR answers cheap.
    """
    # strip common prefix / suffix (they never change the distance)
    start = 0
    limit = min(len(a), len(b))
    while start < limit and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(
                min(
                    previous[j] + 1,  # delete ca
                    current[j - 1] + 1,  # insert cb
                    previous[j - 1] + (ca != cb),  # substitute
                )
            )
        previous = current
    return previous[-1]


def normalized_edit_distance(pred: str, target: str) -> float:
    """``edit_distance / max(len)`` after stripping surrounding whitespace; 0.0 when both empty."""
    pred, target = pred.strip(), target.strip()
    longest = max(len(pred), len(target))
    if longest == 0:
        return 0.0
    return edit_distance(pred, target) / longest


@register_reward("edit", tasks=("ocr",))
def edit(completion: str, record: Mapping) -> float | None:
    """``1 - normalized edit distance`` to ``record["target"]``.

    Both empty -> 1.0; an empty completion with a nonempty target -> 0.0 (it parsed, it is just
    wrong). Only a non-string completion gives ``None``.
    """
    if not isinstance(completion, str):
        return None
    return 1.0 - normalized_edit_distance(completion, str(record["target"]))
