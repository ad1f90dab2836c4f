"""Tests of perpo.losses against values worked out by hand.

The hand example used throughout (beta = 1, one list of N = 3 answers, deliberately unsorted):

    rewards r = [0.2, 0.9, 0.5]
    scores  s = [0, ln 3, ln 2]          (policy = ref + s)

Strict pairs (i preferred over j), reward gap and pair term softplus(-(s_i - s_j)) = ln(1 + e^(s_j - s_i)):

    (1, 0): gap 0.7, term ln(1 + 1/3) = ln(4/3)
    (1, 2): gap 0.4, term ln(1 + 2/3) = ln(5/3)
    (2, 0): gap 0.3, term ln(1 + 1/2) = ln(3/2)
"""

from __future__ import annotations

import math

import pytest
import torch

from perpo.losses import (
    LOSSES,
    degenerate_lists,
    dpo_loss,
    lipo_lambda_loss,
    lipo_loss,
    perpo_loss,
)

LN = math.log
T43, T53, T32 = LN(4 / 3), LN(5 / 3), LN(3 / 2)
REF = [-5.0, -7.0, -6.0]


def _lists(rewards, scores, ref=None):
    """(policy, ref, rewards) float64 [B, N] tensors with policy = ref + scores; policy requires grad."""
    rewards = torch.tensor(rewards, dtype=torch.float64)
    scores = torch.tensor(scores, dtype=torch.float64)
    ref = torch.tensor(ref if ref is not None else [REF] * len(scores), dtype=torch.float64)
    return (ref + scores).requires_grad_(), ref, rewards


def _hand():
    return _lists([[0.2, 0.9, 0.5]], [[0.0, LN(3), LN(2)]])


def _kwargs(name):
    return {"beta": 1.0, "gamma": 0.5} if name == "perpo" else {"beta": 1.0}


def test_perpo_gamma_1_by_hand():
    """gamma = 1: weights 0.7/1.4, 0.4/1.4, 0.3/1.4 = 1/2, 2/7, 3/14;
    L = ln(4/3)/2 + (2/7) ln(5/3) + (3/14) ln(3/2) ~= 0.376676."""
    loss = perpo_loss(*_hand(), beta=1.0, gamma=1.0)
    expected = T43 / 2 + 2 / 7 * T53 + 3 / 14 * T32
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(0.376676, abs=1e-6)


def test_perpo_gamma_half_by_hand():
    """gamma = 0.5 (released setting): weights sqrt(0.7), sqrt(0.4), sqrt(0.3) over their sum
    (~2.016839); L = (0.836660 ln(4/3) + 0.632456 ln(5/3) + 0.547723 ln(3/2)) / 2.016839 ~= 0.389644."""
    a, b, c = math.sqrt(0.7), math.sqrt(0.4), math.sqrt(0.3)
    expected = (a * T43 + b * T53 + c * T32) / (a + b + c)
    assert perpo_loss(*_hand(), beta=1.0, gamma=0.5).item() == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(0.389644, abs=1e-6)


def test_perpo_gamma_0_by_hand():
    """gamma = 0: uniform 1/3; L = (ln(4/3) + ln(5/3) + ln(3/2)) / 3 = ln(10/3) / 3 ~= 0.401324."""
    expected = LN(10 / 3) / 3
    assert perpo_loss(*_hand(), beta=1.0, gamma=0.0).item() == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(0.401324, abs=1e-6)


def test_beta_scales_the_score_gap():
    """beta = 0.5 on doubled scores gives the same pair terms, hence the gamma = 1 hand value."""
    policy, ref, rewards = _lists([[0.2, 0.9, 0.5]], [[0.0, 2 * LN(3), 2 * LN(2)]])
    expected = T43 / 2 + 2 / 7 * T53 + 3 / 14 * T32
    assert perpo_loss(policy, ref, rewards, beta=0.5, gamma=1.0).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", list(LOSSES))
def test_permutation_invariance(name):
    """The same permutation of the answers (policy, ref, rewards together) leaves every loss unchanged."""
    g = torch.Generator().manual_seed(0)
    policy, ref, rewards = (torch.randn(3, 6, generator=g, dtype=torch.float64) for _ in range(3))
    perm = torch.randperm(6, generator=g)
    fn, kw = LOSSES[name], _kwargs(name)
    loss = fn(policy, ref, rewards, **kw)
    permuted = fn(policy[:, perm], ref[:, perm], rewards[:, perm], **kw)
    torch.testing.assert_close(loss, permuted)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
def test_tied_pair_contributes_nothing(gamma):
    """r = [0.2, 0.9, 0.2], s = [0, ln 3, ln 2]: answers 0 and 2 are tied, so only (1, 0) with term
    ln(4/3) and (1, 2) with term ln(5/3) remain, both with gap 0.7, hence weight 1/2 for every gamma
    (including 0, where the release's 0^0 = 1 gave the tied pair weight too):
    L = (ln(4/3) + ln(5/3)) / 2 = ln(20/9) / 2."""
    policy, ref, rewards = _lists([[0.2, 0.9, 0.2]], [[0.0, LN(3), LN(2)]])
    expected = (T43 + T53) / 2
    assert perpo_loss(policy, ref, rewards, beta=1.0, gamma=gamma).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("name", list(LOSSES))
def test_all_equal_rewards_give_exact_zero_and_zero_grad(name):
    """No strict pair: loss exactly 0, gradient exactly 0, nothing NaN (gamma = 0 too)."""
    policy, ref, rewards = _lists([[0.4, 0.4, 0.4]], [[0.3, -1.0, 2.0]])
    kw = {"beta": 0.1, "gamma": 0.0} if name == "perpo" else {"beta": 0.1}
    loss = LOSSES[name](policy, ref, rewards, **kw)
    assert loss.item() == 0.0
    loss.sum().backward()
    assert torch.isfinite(policy.grad).all()
    assert (policy.grad == 0).all()


def test_degenerate_list_does_not_affect_its_neighbour():
    """Batch of the hand list and an all-equal list: [hand value (gamma = 1), 0], finite gradient,
    zero gradient on the degenerate list."""
    policy, ref, rewards = _lists(
        [[0.2, 0.9, 0.5], [0.7, 0.7, 0.7]], [[0.0, LN(3), LN(2)], [1.0, 2.0, 3.0]]
    )
    loss = perpo_loss(policy, ref, rewards, beta=1.0, gamma=1.0)
    assert loss[0].item() == pytest.approx(T43 / 2 + 2 / 7 * T53 + 3 / 14 * T32, rel=1e-9)
    assert loss[1].item() == 0.0
    loss.mean().backward()
    assert torch.isfinite(policy.grad).all()
    assert (policy.grad[1] == 0).all() and (policy.grad[0] != 0).all()


def test_degenerate_lists():
    """Rows: all equal -> True; one strict pair -> False; only one valid answer -> True."""
    rewards = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.5, 0.5], [0.3, 0.9, 0.1]])
    mask = torch.tensor([[True] * 3, [True] * 3, [True, False, False]])
    assert degenerate_lists(rewards, mask).tolist() == [True, False, True]
    assert degenerate_lists(rewards).tolist() == [True, False, False]


def test_lipo_equals_perpo_gamma_0():
    """Integer rewards in {0, 1, 2} so that ties are frequent."""
    g = torch.Generator().manual_seed(1)
    policy, ref = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    rewards = torch.randint(0, 3, (4, 5), generator=g).float()
    torch.testing.assert_close(
        lipo_loss(policy, ref, rewards, beta=0.3), perpo_loss(policy, ref, rewards, beta=0.3, gamma=0.0)
    )


def test_lipo_lambda_by_hand():
    """r = [0, 2, 1], s = [0, ln 2, ln 3], beta = 1.
    G = 2^r - 1 = [0, 3, 1]. Sorted by s descending: answer 2, answer 1, answer 0, so
    tau = [3, 2, 1] (the model's ranking, NOT the reward ranking) and D = [ln 4, ln 3, ln 2].
    pair (1, 0): Delta = 3 (1/ln 3 - 1/ln 4) ~= 0.566674, term ln(1 + 1/2) = ln(3/2)
    pair (1, 2): Delta = 2 (1/ln 2 - 1/ln 3) ~= 1.064912, term ln(1 + 3/2) = ln(5/2)
    pair (2, 0): Delta = 1 (1/ln 2 - 1/ln 4) ~= 0.721348, term ln(1 + 1/3) = ln(4/3)
    L = sum Delta * term / sum Delta ~= 1.413052 / 2.352934 ~= 0.600549."""
    policy, ref, rewards = _lists([[0.0, 2.0, 1.0]], [[0.0, LN(2), LN(3)]])
    d10 = 3 * (1 / LN(3) - 1 / LN(4))
    d12 = 2 * (1 / LN(2) - 1 / LN(3))
    d20 = 1 * (1 / LN(2) - 1 / LN(4))
    expected = (d10 * LN(3 / 2) + d12 * LN(5 / 2) + d20 * LN(4 / 3)) / (d10 + d12 + d20)
    loss = lipo_lambda_loss(policy, ref, rewards, beta=1.0)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(0.600549, abs=1e-6)
    loss.backward()  # the weights are constants: the gradient is sum_ij w_ij d(term_ij)/ds
    assert torch.isfinite(policy.grad).all()


def test_lipo_lambda_score_ties_broken_by_index():
    """r = [0, 2, 1], s = [0, 0, ln 2]: answer 2 ranks first, answers 0 and 1 tie and keep index
    order, so tau = [2, 3, 1], D = [ln 3, ln 4, ln 2].
    pair (1, 0): Delta = 3 (1/ln 3 - 1/ln 4), term ln 2
    pair (1, 2): Delta = 2 (1/ln 2 - 1/ln 4), term ln(1 + 2) = ln 3
    pair (2, 0): Delta = 1 (1/ln 2 - 1/ln 3), term ln(1 + 1/2) = ln(3/2)."""
    policy, ref, rewards = _lists([[0.0, 2.0, 1.0]], [[0.0, 0.0, LN(2)]])
    d10 = 3 * (1 / LN(3) - 1 / LN(4))
    d12 = 2 * (1 / LN(2) - 1 / LN(4))
    d20 = 1 * (1 / LN(2) - 1 / LN(3))
    expected = (d10 * LN(2) + d12 * LN(3) + d20 * LN(3 / 2)) / (d10 + d12 + d20)
    assert lipo_lambda_loss(policy, ref, rewards, beta=1.0).item() == pytest.approx(expected, rel=1e-9)


def test_dpo_by_hand():
    """Hand list: chosen = answer 1 (r 0.9), rejected = answer 0 (r 0.2): L = ln(1 + 1/3) = ln(4/3)."""
    assert dpo_loss(*_hand(), beta=1.0).item() == pytest.approx(T43, rel=1e-9)


def test_dpo_reward_ties_pick_lowest_index():
    """r = [0.9, 0.2, 0.9, 0.2], s = [0, ln 3, ln 2, 0]: chosen = 0, rejected = 1,
    L = softplus(-(0 - ln 3)) = ln(1 + 3) = ln 4 (other picks would give ln(5/2), ln 2 or ln 3)."""
    policy, ref, rewards = _lists([[0.9, 0.2, 0.9, 0.2]], [[0.0, LN(3), LN(2), 0.0]], ref=[[0.0] * 4])
    assert dpo_loss(policy, ref, rewards, beta=1.0).item() == pytest.approx(LN(4), rel=1e-9)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
def test_dpo_equals_perpo_on_pairs(gamma):
    """N = 2 lists have a single pair of weight 1, whatever gamma."""
    g = torch.Generator().manual_seed(2)
    policy, ref, rewards = (torch.randn(5, 2, generator=g) for _ in range(3))
    torch.testing.assert_close(
        dpo_loss(policy, ref, rewards, beta=0.1), perpo_loss(policy, ref, rewards, beta=0.1, gamma=gamma)
    )


@pytest.mark.parametrize("name", list(LOSSES))
def test_masked_answers_are_ignored(name):
    """The hand list with two padded answers (an extreme one: score +100, reward 5, and a NaN one)
    equals the hand list alone; the padded answers get exactly zero gradient."""
    fn, kw = LOSSES[name], _kwargs(name)
    expected = fn(*_hand(), **kw)
    policy, ref, rewards = _lists(
        [[0.2, 5.0, 0.9, 0.5, 0.0]], [[0.0, 100.0, LN(3), LN(2), 0.0]], ref=[[-5.0, 0.0, -7.0, -6.0, 0.0]]
    )
    with torch.no_grad():
        policy[0, 4] = float("nan")
        rewards[0, 4] = float("nan")
    mask = torch.tensor([[True, False, True, True, False]])
    loss = fn(policy, ref, rewards, mask=mask, **kw)
    torch.testing.assert_close(loss, expected.detach())
    loss.backward()
    assert torch.isfinite(policy.grad).all()
    assert policy.grad[0, 1] == 0 and policy.grad[0, 4] == 0


def test_sgd_step_widens_best_worst_gap():
    """The best answer is preferred in every pair it is in, the worst dispreferred, so
    dL/ds_best < 0 < dL/ds_worst and one SGD step increases s_best - s_worst."""
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(1, 6, generator=g)
    policy = (ref + 0.5 * torch.randn(1, 6, generator=g)).requires_grad_()
    rewards = torch.tensor([[0.3, 0.1, 0.95, 0.5, 0.05, 0.7]])
    best, worst = 2, 4
    perpo_loss(policy, ref, rewards, beta=0.1, gamma=0.5).sum().backward()
    assert policy.grad[0, best] < 0 < policy.grad[0, worst]
    with torch.no_grad():
        gap_before = (policy - ref)[0, best] - (policy - ref)[0, worst]
        stepped = policy - 1.0 * policy.grad
        gap_after = (stepped - ref)[0, best] - (stepped - ref)[0, worst]
    assert gap_after > gap_before


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"rewards": torch.zeros(2, 3)}, r"rewards has shape \(2, 3\) but policy_logps has \(2, 4\)"),
        ({"ref_logps": torch.zeros(2, 5)}, "ref_logps"),
        ({"mask": torch.ones(2, 3, dtype=torch.bool)}, "mask"),
        ({"mask": torch.ones(2, 4)}, "mask must be a bool"),
        ({"policy_logps": torch.zeros(4), "ref_logps": torch.zeros(4), "rewards": torch.zeros(4)}, "policy_logps"),
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"gamma": -0.5}, "gamma"),
    ],
)
def test_bad_inputs_raise(bad, match):
    args = {"policy_logps": torch.zeros(2, 4), "ref_logps": torch.zeros(2, 4), "rewards": torch.zeros(2, 4)}
    args.update(beta=0.1, gamma=0.5, mask=None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        perpo_loss(**args)


@pytest.mark.parametrize("name", ["lipo", "lipo_lambda", "dpo"])
def test_other_losses_validate_beta(name):
    with pytest.raises(ValueError, match="beta"):
        LOSSES[name](torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3), beta=0.0)


def test_degenerate_lists_validates_mask_shape():
    with pytest.raises(ValueError, match=r"mask has shape \(1, 2\) but rewards has \(1, 3\)"):
        degenerate_lists(torch.zeros(1, 3), torch.ones(1, 2, dtype=torch.bool))
