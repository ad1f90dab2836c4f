"""Lists -> scored lists: every sampled answer gets the task reward; lists without spread go.

A scored list is a record plus N answers (token ids and text), N rewards and N parse flags.
An answer that does not parse scores 0 and is counted. Online training builds scored lists
every step; offline lists are the same values read from disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from perpo.data.stored_lists import TOKEN_COLUMN

RewardFn = Callable[[str, Mapping[str, Any]], "float | None"]


@dataclass
class ScoredLists:
    answers: list[list[list[int]]]  # [B][N] token ids
    texts: list[list[str]]  # [B][N]
    rewards: torch.Tensor  # [B, N] in [0, 1]
    parsed: torch.Tensor  # [B, N] bool: False = unparseable, scored 0

    @property
    def spread(self) -> torch.Tensor:
        """best minus worst reward of each list: the discriminative signal it carries."""
        return self.rewards.max(dim=1).values - self.rewards.min(dim=1).values


def score_lists(
    reward_fn: RewardFn,
    records: Sequence[Mapping[str, Any]],
    answers: list[list[list[int]]],
    texts: list[list[str]],
) -> ScoredLists:
    rewards, parsed = [], []
    for record, row in zip(records, texts, strict=True):
        values = [_safe_reward(reward_fn, text, record) for text in row]
        parsed.append([v is not None for v in values])
        rewards.append([0.0 if v is None else v for v in values])
    return ScoredLists(
        answers, texts, torch.tensor(rewards, dtype=torch.float32), torch.tensor(parsed, dtype=torch.bool)
    )


def decode_and_score(reward_fn: RewardFn, records: Sequence[Mapping[str, Any]], answers: list[list[list[int]]], processor: Any) -> ScoredLists:
    """Sampled token ids -> their text (special tokens dropped) -> scored lists."""
    from perpo.sampling.generation import decode

    texts = [[decode(processor, ids) for ids in row] for row in answers]
    return score_lists(reward_fn, records, answers, texts)


def _safe_reward(reward_fn: RewardFn, text: str, record: Mapping[str, Any]) -> float | None:
    value = reward_fn(text, record)
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(
            f"reward returned {value} for record {record.get('id')!r} and answer {text!r}; "
            "a reward must return a finite float (or None for an unparseable answer)"
        )
    return value


def keep_mask(scored: ScoredLists, min_margin: float) -> torch.Tensor:
    """Lists whose best-minus-worst reward reaches ``min_margin`` (and is not zero)."""
    spread = scored.spread
    return (spread >= min_margin) & (spread > 0)


def read_stored_lists(rows: Sequence[dict], tokenizer: Any) -> tuple[list[list[list[int]]], ScoredLists]:
    """(answer token ids, scored lists) of stored rows: the sampler's ids when stored, else the
    answer text tokenized as the ground truth is (text + EOS)."""
    from perpo.prompting import answer_ids

    answers = [row[TOKEN_COLUMN] if row.get(TOKEN_COLUMN) else answer_ids(tokenizer, row["answers"]) for row in rows]
    scored = ScoredLists(
        answers,
        [list(row["answers"]) for row in rows],
        torch.tensor([list(row["rewards"]) for row in rows], dtype=torch.float32),
        torch.tensor([list(row["parsed"]) for row in rows], dtype=torch.bool),
    )
    return answers, scored
