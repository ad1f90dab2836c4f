"""The reference model pi_ref behind one interface: ``logps(batch) -> AnswerLogps``.

``FrozenCopyReference`` is the paper's choice: a full frozen copy of the starting policy,
dropout off, never updated. Memory-light variants (adapter disabled, cached log-probs)
implement the same method, so the training step does not know which one it holds.
"""

from __future__ import annotations

import copy

import torch

from perpo.batching import ListBatch
from perpo.scoring import AnswerLogps, answer_logps


def disable_dropout(model: torch.nn.Module) -> None:
    """Dropout off everywhere (paper: both models), so log-probs are deterministic."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class FrozenCopyReference(torch.nn.Module):
    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.model = copy.deepcopy(policy)
        self.model.eval()
        self.model.requires_grad_(False)
        disable_dropout(self.model)

    def train(self, mode: bool = True):  # stays in eval mode whatever Lightning asks
        return super().train(False)

    @torch.no_grad()
    def logps(self, batch: ListBatch) -> AnswerLogps:
        return answer_logps(self.model, batch)


REFERENCES = {"copy": FrozenCopyReference}


def make_reference(kind: str, policy: torch.nn.Module) -> torch.nn.Module:
    if kind not in REFERENCES:
        raise ValueError(f"reference={kind!r} is not known; choose one of {sorted(REFERENCES)}")
    return REFERENCES[kind](policy)
