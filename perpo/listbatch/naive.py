"""Scored lists -> a list batch: tensors for B lists of N answers sharing one prefix each.

The prefix (image placeholder tokens + chat-formatted prompt) is tokenized once per record by
the family's processor; each answer is a list of token ids (sampled ids online, tokenized
text for ground truth and stored lists). The naive layout built here repeats the prefix for
every answer: row ``b * N + k`` is prefix_b + answer_bk, right-padded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Mapping, Sequence

import torch

from perpo.prompting import answer_ids

# Processor outputs that are per-token (built here), not per-image (repeated per answer).
_TOKEN_KEYS = {"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"}
# Per-token type ids some families need in the forward (Qwen-VL M-RoPE: mm_token_type_ids;
# Gemma 3 bidirectional attention over image tokens: token_type_ids). 0 marks text, so answer
# tokens and padding get 0.
_TYPE_KEYS = ("token_type_ids", "mm_token_type_ids")


@dataclass
class Prefixes:
    """Tokenized prompts of B records: unpadded ids and the processor's image tensors."""

    ids: list[list[int]]
    # The processor's image tensors of all records, concatenated on dim 0: pixel_values
    # [B, 3, H, W] (LLaVA), [B, crops, 3, H, W] (LLaVA-NeXT, Idefics3: crops zero-padded to the
    # most), or [patches of all records, D] (Qwen-VL, with image_grid_thw [B, 3]).
    vision: dict[str, torch.Tensor]
    vision_rows: dict[str, list[int]] = field(default_factory=dict)  # dim-0 rows per record (default 1)
    token_types: dict[str, list[list[int]]] = field(default_factory=dict)  # per-token type ids per record

    def vision_of(self, records: Sequence[int]) -> dict[str, torch.Tensor]:
        """The image tensors of ``records`` (indices into the B records, repeats allowed), in order."""
        out = {}
        for key, value in self.vision.items():
            rows = self.vision_rows.get(key) or [1] * len(self.ids)
            starts = list(accumulate(rows, initial=0))
            index = [i for r in records for i in range(starts[r], starts[r] + rows[r])]
            out[key] = value[torch.tensor(index, dtype=torch.long)]
        return out


@dataclass
class ListBatch:
    """B lists x N answers, one row per (list, answer)."""

    input_ids: torch.Tensor  # [B*N, L]
    attention_mask: torch.Tensor  # [B*N, L]
    answer_mask: torch.Tensor  # [B*N, L] True where the token is an answer token
    vision: dict[str, torch.Tensor]  # image tensors, repeated per answer
    num_lists: int
    list_size: int
    token_types: dict[str, torch.Tensor] = field(default_factory=dict)  # [B*N, L] each, 0 past the prefix

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, **self.token_types, **self.vision}

    def to(self, device) -> "ListBatch":
        return ListBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.answer_mask.to(device),
            {k: v.to(device) for k, v in self.vision.items()},
            self.num_lists,
            self.list_size,
            {k: v.to(device) for k, v in self.token_types.items()},
        )


def encode_prefixes(processor: Any, prompt_texts: Sequence[str], images: Sequence[Any]) -> Prefixes:
    """Run the processor once per record (image placeholders expanded), keep ids unpadded."""
    ids, vision, rows, types = [], {}, {}, {}
    for text, image in zip(prompt_texts, images, strict=True):
        enc = processor(images=[image], text=[text], return_tensors="pt")
        mask = enc["attention_mask"][0].bool()
        ids.append(enc["input_ids"][0][mask].tolist())
        for key in _TYPE_KEYS:
            if key in enc:
                types.setdefault(key, []).append(enc[key][0][mask].tolist())
        for key, value in enc.items():
            if key not in _TOKEN_KEYS and isinstance(value, torch.Tensor):
                vision.setdefault(key, []).append(value)
                rows.setdefault(key, []).append(value.shape[0] if value.dim() else 1)
    return Prefixes(ids, {k: _cat_padded(v) for k, v in vision.items()}, rows, types)


def _cat_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate on dim 0, zero-padding the other dims to the largest (as the processors pad
    LLaVA-NeXT / Idefics3 crops: the models drop all-zero crops / use image_sizes)."""
    if len({t.shape[1:] for t in tensors}) <= 1:
        return torch.cat(tensors)
    shape = [max(s) for s in zip(*(t.shape[1:] for t in tensors))]
    out = []
    for t in tensors:
        pad = t.new_zeros((t.shape[0], *shape))
        pad[(slice(None), *(slice(0, n) for n in t.shape[1:]))] = t
        out.append(pad)
    return torch.cat(out)


def build_list_batch(
    prefixes: Prefixes,
    answers: Sequence[Sequence[Sequence[int]]],
    pad_token_id: int,
    select: Sequence[int] | None = None,
) -> ListBatch:
    """Naive layout: every answer gets its own copy of its list's prefix (right padding).

    ``answers[b][k]`` are the ids of answer k of list b; all lists have the same N.
    ``select`` picks which records of ``prefixes`` the lists belong to (default: all, in order).
    """
    select = list(range(len(answers))) if select is None else list(select)
    n = len(answers[0])
    if any(len(a) != n for a in answers):
        raise ValueError(f"all lists in a batch need the same size; got {[len(a) for a in answers]}")
    rows, answer_spans = [], []
    for b, record_index in enumerate(select):
        prefix = prefixes.ids[record_index]
        for ans in answers[b]:
            ans = list(ans)
            if not ans:
                raise ValueError(f"list {b} holds an empty answer (no tokens); cannot score it")
            rows.append(prefix + ans)
            answer_spans.append((len(prefix), len(prefix) + len(ans)))
    width = max(len(r) for r in rows)
    index = [r for r in select for _ in range(n)]  # the record of each row
    token_types = {}
    for key, per_record in prefixes.token_types.items():
        token_types[key] = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(index):
            token_types[key][i, : len(per_record[r])] = torch.tensor(per_record[r])
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    answer_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, (start, end)) in enumerate(zip(rows, answer_spans)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        answer_mask[i, start:end] = True
    return ListBatch(
        input_ids, attention_mask, answer_mask, prefixes.vision_of(index), len(select), n, token_types
    )


def ground_truth_batch(processor: Any, family: Any, task: Any, records: Sequence, images: Sequence | None = None) -> ListBatch:
    """Lists of one answer each: the ground truth in the family's format (SFT, NLL checks).

    ``task``: a ``TaskSpec``, or a mapping task name -> ``TaskSpec`` for records of several tasks
    (a multi-task warm start), each prompted by its ``record["task"]``'s spec.
    ``images`` replaces the records' own images (the shuffled-image check) when given.
    """
    specs = [task[r["task"]] if isinstance(task, Mapping) else task for r in records]
    prompts = [family.prompt_text(r, spec) for r, spec in zip(records, specs)]
    images = [r["image"] for r in records] if images is None else images
    answers = answer_ids(processor.tokenizer, [family.answer_text(r, spec) for r, spec in zip(records, specs)])
    prefixes = encode_prefixes(processor, prompts, images)
    return build_list_batch(prefixes, [[a] for a in answers], processor.tokenizer.pad_token_id)

