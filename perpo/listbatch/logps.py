"""List batch -> [B, N] log-probabilities of each answer (sum over its tokens).

log pi(y | image, prompt) = sum over answer tokens t of log softmax(logits_{t-1})[y_t].
The paper sums (no length normalization); ``AnswerLogps.mean`` gives the per-token variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perpo.listbatch.naive import ListBatch


@dataclass
class AnswerLogps:
    sum: torch.Tensor  # [B, N] summed answer-token log-probs
    num_tokens: torch.Tensor  # [B, N] answer lengths in tokens

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.num_tokens.clamp(min=1)


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(labels) under logits, computed in fp32: [R, L, V], [R, L] -> [R, L]."""
    logits = logits.float()
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def answer_logps(model: torch.nn.Module, batch: ListBatch) -> AnswerLogps:
    """Naive scoring: one forward over B*N rows (each row repeats its list's prefix)."""
    logits = model(**batch.model_inputs(), use_cache=False).logits
    # Position t predicts token t+1: shift so that answer tokens are scored by their prefix.
    labels = batch.input_ids[:, 1:]
    mask = batch.answer_mask[:, 1:]
    logps = token_logps(logits[:, :-1], labels) * mask
    shape = (batch.num_lists, batch.list_size)
    return AnswerLogps(logps.sum(-1).view(shape), mask.sum(-1).view(shape))
