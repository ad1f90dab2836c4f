"""The reference model pi_ref behind one interface: ``logps(batch) -> AnswerLogps``.

``FrozenCopyReference`` is the paper's choice: a full frozen copy of the starting policy,
dropout off, never updated. Memory-light variants implement the same method, so the training
step does not know which one it holds: ``AdapterOffReference`` (a LoRA policy with its adapter
disabled, no second copy) and ``CachedReference`` (log-probs computed by ``sample.py`` with the
starting model and stored with each list: no reference model at all).
"""

from __future__ import annotations

import copy

import torch

from perpo.listbatch.naive import ListBatch
from perpo.listbatch.packed import PackedBatch
from perpo.listbatch.logps import AnswerLogps
from perpo.listbatch.packed import batch_logps


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
    def logps(self, batch: ListBatch | PackedBatch, rows=None) -> AnswerLogps:
        return batch_logps(self.model, batch)


class AdapterOffReference(torch.nn.Module):
    """pi_ref = the LoRA policy with its adapter disabled (peft ``disable_adapter()``): no second copy.

    With LoRA (``perpo.models.lora.apply_lora``) the base weights never change and the trained
    projector is a ``modules_to_save`` copy, so the policy with the adapter off is exactly the
    starting policy. Scored in eval mode with dropout off, as the frozen copy; the policy's
    training mode is restored afterwards. The policy is held outside the module tree, so its
    parameters are neither duplicated in ``state_dict`` nor seen by optimizers through this module.
    """

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        if not hasattr(policy, "disable_adapter"):
            raise ValueError(
                "reference=adapter_off needs a LoRA policy (a peft model: model.lora.enabled=true); "
                f"got {type(policy).__name__} -- use reference=copy for full fine-tuning"
            )
        self._policy = (policy,)  # a tuple: not registered as a submodule

    @property
    def policy(self) -> torch.nn.Module:
        return self._policy[0]

    def train(self, mode: bool = True):  # nothing of its own to switch
        return super().train(False)

    @torch.no_grad()
    def logps(self, batch: ListBatch | PackedBatch, rows=None) -> AnswerLogps:
        policy = self.policy
        was_training = policy.training
        policy.eval()
        try:
            with policy.disable_adapter():
                return batch_logps(policy, batch)
        finally:
            policy.train(was_training)


class CachedReference(torch.nn.Module):
    """pi_ref log-probs read from the stored lists (``ref_logps``, ``ref_num_tokens``).

    ``sample.py sample.ref_logps=true`` scores every kept answer with the sampling model, which
    is the model training starts from, so these are exactly what ``copy`` would compute (same
    tokens: training uses the stored ``answer_ids``), once per list and never again.
    """

    def __init__(self, policy: torch.nn.Module | None = None):
        super().__init__()

    def train(self, mode: bool = True):
        return super().train(False)

    def logps(self, batch: ListBatch | PackedBatch, rows=None) -> AnswerLogps:
        if rows is None or any("ref_logps" not in row or row["ref_logps"] is None for row in rows):
            ids = [row.get("id") for row in rows or []]
            raise ValueError(
                f"reference=cached needs stored reference log-probs (lists {ids[:5]} have none): "
                "sample the lists with sample.ref_logps=true, or use reference=copy"
            )
        device = batch.input_ids.device
        total = torch.tensor([list(row["ref_logps"]) for row in rows], dtype=torch.float32, device=device)
        count = torch.tensor([list(row["ref_num_tokens"]) for row in rows], dtype=torch.long, device=device)
        return AnswerLogps(total, count)


REFERENCES = {"copy": FrozenCopyReference, "adapter_off": AdapterOffReference, "cached": CachedReference}


def make_reference(kind: str, policy: torch.nn.Module) -> torch.nn.Module:
    if kind not in REFERENCES:
        raise ValueError(f"reference={kind!r} is not known; choose one of {sorted(REFERENCES)}")
    return REFERENCES[kind](policy)
