"""Preference losses over lists of answers: PerPO, LiPO, LiPO-lambda and DPO.

Every loss takes ``[B, N]`` tensors for B lists of N answers each and returns per-list
losses ``[B]`` (the batch loss is their mean, taken by the caller):

- ``policy_logps``, ``ref_logps``: summed answer-token log-probs under the policy and the
  frozen reference model;
- ``rewards``: the answers' rewards, in ANY order (nothing here assumes a sorted list);
- ``mask`` (optional, bool): True for the valid answers of ragged lists. Invalid entries never
  form pairs, and their values (even NaN padding) reach neither the loss nor its gradient.

The score of answer k is s_k = policy_logps_k - ref_logps_k. The listwise losses sum over the
STRICT pairs (i, j), r_i > r_j, of one list:

    L = sum_ij w_ij * softplus(-beta * (s_i - s_j)) = -sum_ij w_ij * log sigmoid(beta (s_i - s_j))

with weights w_ij >= 0 normalized to sum to 1 per list; they differ only in w_ij. Tied rewards
never form a pair, and a list without any strict pair (all rewards equal, < 2 valid answers) has
loss exactly 0 and zero gradient (see :func:`degenerate_lists`). This fixes three pitfalls of
the release: it assumed descending order, gave tied pairs weight 0^0 = 1 with gamma = 0, and
divided by zero (NaN) on all-equal lists.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_shapes(name: str, ref: Tensor, **others: Tensor | None) -> None:
    """Raise ValueError unless ``ref`` is [B, N] and every other given tensor has its shape."""
    if ref.dim() != 2:
        raise ValueError(f"{name} must have shape [B, N], got {tuple(ref.shape)}")
    for other_name, t in others.items():
        if t is not None and t.shape != ref.shape:
            raise ValueError(f"{other_name} has shape {tuple(t.shape)} but {name} has {tuple(ref.shape)}")


def _strict_pairs(rewards: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Return (mask [B, N], detached float rewards [B, N], pairs [B, N, N]).

    ``pairs[b, i, j]`` is True iff answers i and j are both valid and r_i > r_j strictly.
    """
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    elif mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    r = rewards.detach().to(torch.promote_types(rewards.dtype, torch.float32))
    r = torch.where(mask, r, 0.0)
    pairs = (r[:, :, None] > r[:, None, :]) & mask[:, :, None] & mask[:, None, :]
    return mask, r, pairs


def _pair_terms(policy_logps, ref_logps, rewards, mask, beta):
    """Validate inputs; return (mask, scores s, rewards r, pairs, terms [B, N, N]).

    ``terms[b, i, j] = softplus(-beta * (s_i - s_j))``; invalid answers get score 0 first, so
    their (possibly NaN) log-probs never enter the computation graph's values.
    """
    _check_shapes("policy_logps", policy_logps, ref_logps=ref_logps, rewards=rewards, mask=mask)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    mask, r, pairs = _strict_pairs(rewards, mask)
    s = torch.where(mask, policy_logps - ref_logps, 0.0)
    terms = F.softplus(-beta * (s[:, :, None] - s[:, None, :]))
    return mask, s, r, pairs, terms


def _weighted_sum(terms: Tensor, weights: Tensor, pairs: Tensor) -> Tensor:
    """sum_ij w_ij * terms_ij per list, w = weights over strict pairs normalized to sum 1.

    The denominator is replaced by 1 BEFORE dividing where a list has no pair (its weights are
    all 0 then), so the loss is exactly 0 with exactly zero gradient, never 0/0 = NaN.
    """
    weights = torch.where(pairs, weights, 0.0)
    total = weights.sum(dim=(1, 2), keepdim=True)
    weights = weights / torch.where(total > 0, total, 1.0)
    return (weights.to(terms.dtype) * terms).sum(dim=(1, 2))


def perpo_loss(policy_logps, ref_logps, rewards, *, beta: float, gamma: float, mask=None) -> Tensor:
    """PerPO: listwise loss with the reward gap as margin weight.

        w_ij = (r_i - r_j)^gamma / sum_{(k,l): r_k > r_l} (r_k - r_l)^gamma    for r_i > r_j
        L    = sum_{(i,j): r_i > r_j} w_ij * softplus(-beta * (s_i - s_j))

    gamma = 0: uniform weights (LiPO); 0.5: the released setting; 1: linear margin.
    Returns [B]; 0 for lists with no strict pair.
    """
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    _, _, r, pairs, terms = _pair_terms(policy_logps, ref_logps, rewards, mask, beta)
    margin = (r[:, :, None] - r[:, None, :]).clamp_min(0.0) ** gamma
    return _weighted_sum(terms, margin, pairs)


def lipo_loss(policy_logps, ref_logps, rewards, *, beta: float, mask=None) -> Tensor:
    """The paper's "LiPO" baseline: uniform weights over strict pairs (= PerPO with gamma = 0).

        L = mean_{(i,j): r_i > r_j} softplus(-beta * (s_i - s_j))
    """
    return perpo_loss(policy_logps, ref_logps, rewards, beta=beta, gamma=0.0, mask=mask)


def lipo_lambda_loss(policy_logps, ref_logps, rewards, *, beta: float, mask=None) -> Tensor:
    """LiPO-lambda (Liu et al., arXiv 2402.01878) with lambda weights normalized per list.

        G_k   = 2^r_k - 1,   D(tau) = ln(1 + tau)
        tau_k = 1-based rank of answer k in the list sorted by score s DESCENDING
                (detached scores; ties broken by index; invalid answers ranked last)
        Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|
        L = sum_{(i,j): r_i > r_j} (Delta_ij / sum_kl Delta_kl) * softplus(-beta * (s_i - s_j))

    The weights carry no gradient. Normalizing them to sum 1 makes the loss's scale comparable
    with :func:`perpo_loss`; unnormalized LiPO-lambda differs by a per-list constant factor.
    """
    mask, s, r, pairs, terms = _pair_terms(policy_logps, ref_logps, rewards, mask, beta)
    ranked = torch.where(mask, s.detach(), float("-inf"))
    order = torch.argsort(ranked, dim=1, descending=True, stable=True)
    tau = torch.argsort(order, dim=1).to(r.dtype) + 1  # inverse permutation, 1-based
    gain, inv_d = 2.0**r - 1, 1.0 / torch.log1p(tau)
    delta = (gain[:, :, None] - gain[:, None, :]).abs() * (inv_d[:, :, None] - inv_d[:, None, :]).abs()
    return _weighted_sum(terms, delta, pairs)


def dpo_loss(policy_logps, ref_logps, rewards, *, beta: float, mask=None) -> Tensor:
    """DPO on the best vs the worst answer of each list.

        c = argmax_k r_k, w = argmin_k r_k  (valid answers only; lowest index on ties)
        L = softplus(-beta * (s_c - s_w)) = -log sigmoid(beta * (s_c - s_w))

    0 (zero gradient) when all valid rewards are equal or fewer than 2 answers are valid.
    """
    mask, _, r, pairs, terms = _pair_terms(policy_logps, ref_logps, rewards, mask, beta)
    chosen = torch.where(mask, r, float("-inf")).argmax(dim=1)
    rejected = torch.where(mask, r, float("inf")).argmin(dim=1)
    loss = terms[torch.arange(len(r), device=r.device), chosen, rejected]
    return torch.where(pairs.any(dim=(1, 2)), loss, 0.0)


def degenerate_lists(rewards: Tensor, mask: Tensor | None = None) -> Tensor:
    """Bool [B]: True for lists with no strict pair (all valid rewards equal, < 2 valid)."""
    _check_shapes("rewards", rewards, mask=mask)
    return ~_strict_pairs(rewards, mask)[2].any(dim=(1, 2))


LOSSES = {"perpo": perpo_loss, "lipo": lipo_loss, "lipo_lambda": lipo_lambda_loss, "dpo": dpo_loss}
#: the ``loss=`` names :func:`list_loss` accepts (LiPO-lambda is ``loss=perpo margin=lambda``);
#: perpo.config.LIST_LOSSES repeats them so that validation needs no torch (tests/test_step.py compares)
LIST_LOSSES = ("perpo", "dpo", "lipo")


def list_loss(loss: str, *, beta: float, gamma: float | None, margin: str = "power") -> Callable:
    """(policy_logps, ref_logps, rewards) -> [B] for the configured loss and pair weights."""
    if loss == "perpo":
        if margin == "lambda":
            return partial(lipo_lambda_loss, beta=beta)
        return partial(perpo_loss, beta=beta, gamma=gamma)
    if loss == "lipo":
        return partial(lipo_loss, beta=beta)
    if loss == "dpo":
        return partial(dpo_loss, beta=beta)
    raise ValueError(f"loss={loss!r} is not a list loss; choose one of {', '.join(LIST_LOSSES)}")
