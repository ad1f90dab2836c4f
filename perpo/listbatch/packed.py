"""Shared-prefix scoring: each list's image and prompt run through the model ONCE.

The naive layout (:func:`perpo.listbatch.naive.build_list_batch`) copies a list's prefix (image
placeholders + prompt, P tokens) into each of its N rows, so a list costs N * (P + A) tokens
and N vision-tower passes. Here a list is ONE packed sequence

    prefix | a_1 | a_2 | ... | a_N | pad...

of P + sum_k A_k tokens (about P + N*A), and its image goes through the vision tower once. The
token-count bound on the speed-up is N*(P+A) / (P+N*A); gradients flow into the shared prefix
from all N answers, exactly as the sum over the N copies does in the naive layout.

Two things make the N answers independent of each other inside one sequence:

- a 4D block attention mask: token i may attend key j iff j <= i and j is a prefix token or
  lies in i's own segment. So the prefix is causal, and answer k sees the whole prefix and its
  own earlier tokens only, never another answer. Pads form their own segment (they see the
  prefix and earlier pads, nobody sees them), so no row is fully masked (no NaN in softmax).
  The mask is handed to the model as an additive float mask [B, 1, L, L] (0 / dtype min) in the
  model's dtype; transformers' ``create_causal_mask`` passes a 4D mask through unchanged and
  both ``eager`` (adds it) and ``sdpa`` (``attn_mask``) use it as such.
- position_ids that restart after the prefix: answer k's token j sits at position P + j, just
  as it does in its own row of the naive layout, so RoPE sees identical positions.

Answer k's first token is predicted by the logits of the prefix's LAST token (shared by all N
answers); its token j > 0 by the logits at its token j-1. ``source`` holds those positions.

Limits: the attention implementation must accept a dense 4D mask (``eager``, ``sdpa``; not
flash-attention), and the family must take 1D text positions (not Qwen-VL's 3D M-RoPE) and
one image tensor row per list (LLaVA-style ``pixel_values [B, 3, H, W]``). Elsewhere use the
naive layout: ``score_lists(..., layout="naive")``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from perpo.listbatch.naive import ListBatch, Prefixes, build_list_batch
from perpo.listbatch.logps import AnswerLogps, answer_logps, token_logps

LAYOUTS = ("shared", "naive")
log = logging.getLogger(__name__)


@dataclass
class PackedBatch:
    """B lists, each packed as one row ``prefix + a_1 + ... + a_N`` (right padding)."""

    input_ids: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    allowed: torch.Tensor  # [B, L, L] bool: query i may attend key j
    source: torch.Tensor  # [B, N, A] position whose logits predict labels[b, n, a]
    labels: torch.Tensor  # [B, N, A] answer token ids (0 where label_mask is False)
    label_mask: torch.Tensor  # [B, N, A] True for real answer tokens
    vision: dict[str, torch.Tensor]  # image tensors, ONE per list
    num_lists: int
    list_size: int

    def model_inputs(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Model kwargs; the block mask becomes an additive [B, 1, L, L] mask of ``dtype``."""
        mask = torch.zeros(self.allowed.shape, dtype=dtype, device=self.allowed.device)
        mask = mask.masked_fill(~self.allowed, torch.finfo(dtype).min)[:, None]
        return {
            "input_ids": self.input_ids,
            "attention_mask": mask,
            "position_ids": self.position_ids,
            **self.vision,
        }

    def to(self, device) -> "PackedBatch":
        moved = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        vision = {k: v.to(device) for k, v in self.vision.items()}
        return PackedBatch(**moved, vision=vision, num_lists=self.num_lists, list_size=self.list_size)


def pack_lists(
    prefixes: Prefixes,
    answers: Sequence[Sequence[Sequence[int]]],
    pad_token_id: int,
    select: Sequence[int] | None = None,
) -> PackedBatch:
    """Shared-prefix layout; arguments as in :func:`perpo.listbatch.naive.build_list_batch`."""
    select = list(range(len(answers))) if select is None else list(select)
    if len(select) != len(answers):
        raise ValueError(f"select names {len(select)} records but there are {len(answers)} lists")
    n = len(answers[0]) if answers else 0
    if n == 0 or any(len(a) != n for a in answers):
        raise ValueError(f"all lists in a batch need the same size >= 1; got {[len(a) for a in answers]}")
    for b, lst in enumerate(answers):
        if any(len(a) == 0 for a in lst):
            raise ValueError(f"list {b} holds an empty answer (no tokens); cannot score it")

    lengths = [len(prefixes.ids[r]) + sum(len(a) for a in lst) for r, lst in zip(select, answers)]
    width = max(lengths)
    max_answer = max(len(a) for lst in answers for a in lst)
    num_lists = len(select)
    input_ids = torch.full((num_lists, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((num_lists, width), dtype=torch.long)
    segment = torch.full((num_lists, width), -1, dtype=torch.long)  # 0 prefix, k+1 answer k, -1 pad
    source = torch.zeros((num_lists, n, max_answer), dtype=torch.long)
    labels = torch.zeros((num_lists, n, max_answer), dtype=torch.long)
    label_mask = torch.zeros((num_lists, n, max_answer), dtype=torch.bool)
    for b, (record, lst) in enumerate(zip(select, answers)):
        prefix = prefixes.ids[record]
        p = len(prefix)
        input_ids[b, :p] = torch.tensor(prefix, dtype=torch.long)
        position_ids[b, :p] = torch.arange(p)
        segment[b, :p] = 0
        start = p
        for k, ans in enumerate(lst):
            a = len(ans)
            span = slice(start, start + a)
            input_ids[b, span] = torch.tensor(list(ans), dtype=torch.long)
            position_ids[b, span] = torch.arange(p, p + a)
            segment[b, span] = k + 1
            # token 0 is predicted by the prefix's last token, token j by answer token j-1
            source[b, k, :a] = torch.cat([torch.tensor([p - 1]), torch.arange(start, start + a - 1)])
            labels[b, k, :a] = input_ids[b, span]
            label_mask[b, k, :a] = True
            start += a

    causal = torch.ones(width, width, dtype=torch.bool).tril()
    seg_q, seg_k = segment[:, :, None], segment[:, None, :]
    allowed = causal & ((seg_k == 0) | (seg_k == seg_q))
    if prefixes.token_types:
        raise ValueError(
            f"shared-prefix scoring cannot pass per-token type ids ({', '.join(prefixes.token_types)}) "
            "of this family; use scoring=naive"
        )
    vision = prefixes.vision_of(select)
    return PackedBatch(input_ids, position_ids, allowed, source, labels, label_mask, vision, num_lists, n)


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    return getattr(model, "dtype", None) or next(model.parameters()).dtype


def packed_answer_logps(model: torch.nn.Module, packed: PackedBatch) -> AnswerLogps:
    """[B, N] summed answer log-probs from one forward over B packed rows."""
    logits = model(**packed.model_inputs(_model_dtype(model)), use_cache=False).logits  # [B, L, V]
    b, n, a = packed.labels.shape
    rows = torch.arange(b, device=logits.device)[:, None]
    picked = logits[rows, packed.source.view(b, n * a)]  # [B, N*A, V]: fp32 only for these
    logps = token_logps(picked, packed.labels.view(b, n * a)).view(b, n, a) * packed.label_mask
    return AnswerLogps(logps.sum(-1), packed.label_mask.sum(-1))


def check_shared_support(model: torch.nn.Module) -> None:
    """Raise ValueError where the model cannot take the packed layout (use layout="naive")."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    attn = getattr(config, "_attn_implementation", None) or "eager"
    if attn not in ("eager", "sdpa"):
        raise ValueError(f"shared-prefix scoring needs a dense 4D mask (eager/sdpa), not {attn!r}; use the naive layout")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(rope, dict) and "mrope_section" in rope:
        raise ValueError("shared-prefix scoring needs 1D positions; this model uses M-RoPE: use the naive layout")


def resolve_layout(layout: str, model: torch.nn.Module, processor=None) -> str:
    """``auto``: shared where the model supports it, else naive (logged); ``shared`` that the
    model cannot take raises with the reason; ``naive`` always works."""
    if layout not in (*LAYOUTS, "auto"):
        raise ValueError(f"scoring={layout!r} is not known; choose one of auto, {', '.join(LAYOUTS)}")
    if layout == "naive":
        return layout
    try:
        check_shared_support(model)
        typed = sorted(set(getattr(processor, "model_input_names", ())) & {"token_type_ids", "mm_token_type_ids"})
        if typed:  # e.g. Gemma 3 (bidirectional image attention), Qwen-VL (M-RoPE)
            raise ValueError(f"the model takes per-token type ids ({', '.join(typed)}): use the naive layout")
    except ValueError as err:
        if layout == "shared":
            raise ValueError(f"scoring=shared: {err}") from None
        log.info("scoring=auto -> naive: %s", err)
        return "naive"
    return "shared"


def build_batch(prefixes, answers, pad_token_id, select=None, layout: str = "shared") -> ListBatch | PackedBatch:
    """The batch of one layout: ``PackedBatch`` ("shared") or ``ListBatch`` ("naive")."""
    if layout == "shared":
        return pack_lists(prefixes, answers, pad_token_id, select)
    if layout == "naive":
        return build_list_batch(prefixes, answers, pad_token_id, select)
    raise ValueError(f"layout={layout!r} is not known; choose one of {LAYOUTS}")


def batch_logps(model: torch.nn.Module, batch: ListBatch | PackedBatch) -> AnswerLogps:
    """Score either layout (the reference model can take whichever batch the policy got)."""
    if isinstance(batch, PackedBatch):
        return packed_answer_logps(model, batch)
    return answer_logps(model, batch)


def score_lists(model, prefixes, answers, pad_id, select=None, layout: str = "shared") -> AnswerLogps:
    """[B, N] answer log-probs of ``answers`` (``answers[b][k]``: ids) under ``model``."""
    if layout == "shared":
        check_shared_support(model)
    device = next(model.parameters()).device
    return batch_logps(model, build_batch(prefixes, answers, pad_id, select, layout).to(device))
