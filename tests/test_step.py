"""The training step pinned: one optimizer step of each list loss through the module's real path,
and the config-to-loss mapping on hand values.

1. ``PerPOModule.training_step`` on two stored lists, the first without spread (dropped), the
   second kept (fixed answers and unsorted rewards,
   ``stored_lists=True``, reference = a frozen copy, so policy == reference at the start and every
   score s_k = log pi(y_k) - log pi_ref(y_k) is 0). At s = 0 each pair term
   softplus(-beta (s_i - s_j)) has derivative -beta/2 in s_i and +beta/2 in s_j, so

       dL_list/ds_k = -(beta/2) c_k,   c_k = sum_j w_kj - sum_i w_ik   (k's weight as winner
                                                                        minus as loser)

   and with the module's mean over the K kept lists, dL/ds_k = -(beta / 2K) c_k =: g_k. The
   gradient of the step's loss is then sum_k g_k grad log pi(y_k), and one SGD step of rate lr
   changes s_k by -lr grad log pi(y_k) . grad L to first order. The hand weights c_k below are
   computed here from the formulas, not by ``perpo.losses``. A training step that swapped policy
   and reference flips every g_k (the gap then falls); one that gave the kept list the dropped
   list's rewards (no pair: no gradient), or its rewards in another order, or the wrong loss,
   has another g.

2. ``module_kwargs`` + ``PerPOModule`` for every loss / margin: the module's loss function gives
   the hand value on a fixed [1, 3] list.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

no_trainer_log_warning = pytest.mark.filterwarnings("ignore:You are trying to .self.log:UserWarning")

BETA = 0.1
# Two stored lists of N = 3 answers. The first has no spread (all 0.4) and is dropped by the
# spread filter, so the one kept list (K = 1) is the second, whose rewards are deliberately
# unsorted: best answer 1, worst answer 0. (One kept list: with two, the update of one list can
# move the other's scores either way, as shared parameters do.)
ANSWERS = [
    ["[0.30, 0.30, 0.60, 0.60]", "[0.05, 0.45, 0.85, 0.35]", "[0.70, 0.10, 0.20, 0.80]"],
    ["[0.10, 0.20, 0.30, 0.40]", "[0.55, 0.15, 0.95, 0.65]", "[0.25, 0.75, 0.50, 0.90]"],
]
REWARDS = [[0.4, 0.4, 0.4], [0.2, 0.9, 0.5]]
KEPT = [1]
BEST_WORST = {1: (1, 0)}  # (argmax, argmin) of the kept list's rewards


def _hand_pair_weights(rewards: list[float], kind: str, gamma: float | None) -> dict[tuple[int, int], float]:
    """w_ij over the strict pairs r_i > r_j, normalized to sum 1 (at s = 0 for lambda).

    power: (r_i - r_j)^gamma; dpo: 1 on (best, worst) only; lambda: |G_i - G_j| |1/D_i - 1/D_j|
    with G = 2^r - 1, D = ln(1 + tau), and tau = 1, 2, 3 (all scores 0: ties keep index order).
    """
    n = len(rewards)
    pairs = [(i, j) for i in range(n) for j in range(n) if rewards[i] > rewards[j]]
    if kind == "dpo":
        best, worst = rewards.index(max(rewards)), rewards.index(min(rewards))
        return {(best, worst): 1.0}
    if kind == "power":
        raw = {(i, j): (rewards[i] - rewards[j]) ** gamma for i, j in pairs}
    else:
        gain = [2.0**r - 1 for r in rewards]
        inv_d = [1 / math.log(1 + tau) for tau in range(1, n + 1)]
        raw = {(i, j): abs(gain[i] - gain[j]) * abs(inv_d[i] - inv_d[j]) for i, j in pairs}
    total = sum(raw.values())
    return {pair: w / total for pair, w in raw.items()}


def _hand_dl_ds(kind: str, gamma: float | None) -> list[float]:
    """g_k = dL/ds_k at s = 0 for the kept answers (the kept lists' three each, in order)."""
    g = []
    for b in KEPT:
        w = _hand_pair_weights(REWARDS[b], kind, gamma)
        for k in range(3):
            c = sum(v for (i, _), v in w.items() if i == k) - sum(v for (_, j), v in w.items() if j == k)
            g.append(-BETA / (2 * len(KEPT)) * c)
    return g


def test_hand_dl_ds_by_hand():
    """The helper on the kept list (r = [0.2, 0.9, 0.5]; pairs (1,0) gap 0.7, (1,2) gap 0.4, (2,0)
    gap 0.3): dpo: c = [-1, 1, 0]; gamma 0: w = 1/3 each, c = [-2/3, 2/3, 0]; gamma 1: w = 1/2,
    2/7, 3/14, c = [-(1/2 + 3/14), 1/2 + 2/7, 3/14 - 2/7] = [-5/7, 11/14, -1/14]; g = -(0.1 / 2) c."""
    f = -BETA / 2
    assert _hand_dl_ds("dpo", None) == pytest.approx([f * -1, f * 1, 0.0])
    assert _hand_dl_ds("power", 0.0) == pytest.approx([f * -2 / 3, f * 2 / 3, 0.0])
    assert _hand_dl_ds("power", 1.0) == pytest.approx([f * -5 / 7, f * 11 / 14, f * -1 / 14])


def _stored_rows():
    from perpo.data import make_records

    ds = make_records("grounding", len(ANSWERS), seed=5)
    return [
        {**ds[b], "answers": ANSWERS[b], "rewards": REWARDS[b], "parsed": [True] * 3}
        for b in range(len(ANSWERS))
    ]


def _kept_logps(model, processor, family, task, rows) -> torch.Tensor:
    """[3K] summed log-probs of the kept lists' answers, in order, naive layout."""
    from perpo.listbatch.naive import encode_prefixes
    from perpo.listbatch.packed import batch_logps, build_batch
    from perpo.prompting import answer_ids

    kept = [rows[b] for b in KEPT]
    prefixes = encode_prefixes(processor, [family.prompt_text(r, task) for r in kept], [r["image"] for r in kept])
    answers = [answer_ids(processor.tokenizer, r["answers"]) for r in kept]
    batch = build_batch(prefixes, answers, processor.tokenizer.pad_token_id, layout="naive")
    return batch_logps(model, batch).sum.flatten()


LIST_LOSS_CASES = [  # (loss, margin kind, gamma) -> hand weights kind
    pytest.param("perpo", "power", 0.5, "power", id="perpo-gamma0.5"),
    pytest.param("perpo", "lambda", None, "lambda", id="perpo-lambda"),
    pytest.param("lipo", "power", 0.5, "lipo", id="lipo"),
    pytest.param("dpo", "power", 0.5, "dpo", id="dpo"),
]


@no_trainer_log_warning
@pytest.mark.parametrize("loss, margin, gamma, hand", LIST_LOSS_CASES)
def test_one_sgd_step_raises_best_minus_worst(loss, margin, gamma, hand, tiny, family, task):
    """Policy == reference at the start, so s = 0 and the gradient of the step's loss must be
    sum_k g_k grad log pi(y_k) with the hand g (module docstring). After one SGD step (lr 1e-4)
    s_best - s_worst of each kept list rises, by -lr (grad log pi(best) - grad log pi(worst)) . grad L
    to first order (measured within 1%; asserted to 3%)."""
    from perpo.training.config import ListConfig
    from perpo.training.module import PerPOModule

    model, processor = tiny
    rows = _stored_rows()
    torch.manual_seed(0)
    module = PerPOModule(
        copy.deepcopy(model), processor, family, task, None, loss=loss, beta=BETA, gamma=gamma, margin=margin,
        lists=ListConfig(listsize=3, min_margin=0.1), stored_lists=True, scoring="naive", reference="copy",
    )  # fmt: skip
    params = [p for p in module.policy.parameters() if p.requires_grad]
    reference = copy.deepcopy(model).eval()

    # the hand gradient: per-answer gradients of log pi on an untouched copy (= the reference)
    probe = copy.deepcopy(model).eval()
    probe_params = [p for p in probe.parameters() if p.requires_grad]
    lp = _kept_logps(probe, processor, family, task, rows)
    assert lp.shape == (3 * len(KEPT),)
    per_answer = [torch.autograd.grad(lp[k], probe_params, retain_graph=True, allow_unused=True) for k in range(len(lp))]
    per_answer = [torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(gs, probe_params)]) for gs in per_answer]
    jac = torch.stack(per_answer)  # [3K, P]: d log pi(y_k) / d theta
    g = torch.tensor(_hand_dl_ds(*{"power": ("power", gamma), "lambda": ("lambda", None), "lipo": ("power", 0.0), "dpo": ("dpo", None)}[hand]))
    expected_grad = g @ jac

    step_loss = module.training_step(rows, 0)
    assert step_loss.item() == pytest.approx(math.log(2), abs=1e-6)  # s = 0: every pair term is ln 2
    step_loss.backward()
    grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    torch.testing.assert_close(grad, expected_grad, rtol=1e-3, atol=1e-6)

    lr = 1e-4  # the gaps move by ~0.2, within 1% of the first-order prediction
    optim = torch.optim.SGD(params, lr=lr)
    optim.step()
    with torch.no_grad():
        s = _kept_logps(module.policy, processor, family, task, rows) - _kept_logps(reference, processor, family, task, rows)
    predicted = -lr * (jac @ expected_grad)  # first-order change of each s_k
    for slot, b in enumerate(KEPT):
        best, worst = (3 * slot + k for k in BEST_WORST[b])
        gap, first_order = (s[best] - s[worst]).item(), (predicted[best] - predicted[worst]).item()
        assert first_order > 0
        assert gap > 0, f"list {b}: s_best - s_worst = {gap} after one step (must rise from 0)"
        assert gap == pytest.approx(first_order, rel=0.03), (b, gap, first_order)
        print(f"{loss}/{margin}: s_best - s_worst 0 -> {gap:.4f} (first order {first_order:.4f})")


# -- 2. config -> loss ---------------------------------------------------------------------------

CONF = Path(__file__).resolve().parents[1] / "conf"
LN = math.log
# LiPO-lambda on the hand list below, at its scores: tau = [3, 1, 2] (s descending: answer 1, 2, 0),
# 1/D = [1/ln 4, 1/ln 2, 1/ln 3], G = 2^r - 1 = [0.148698, 0.866066, 0.414214];
# Delta_10 = 0.717368 * (1/ln 2 - 1/ln 4) = 0.517471, Delta_12 = 0.451852 * (1/ln 2 - 1/ln 3) = 0.240591,
# Delta_20 = 0.265516 * (1/ln 3 - 1/ln 4) = 0.050154.
_G = [2**0.2 - 1, 2**0.9 - 1, 2**0.5 - 1]
_D10 = (_G[1] - _G[0]) * (1 / LN(2) - 1 / LN(4))
_D12 = (_G[1] - _G[2]) * (1 / LN(2) - 1 / LN(3))
_D20 = (_G[2] - _G[0]) * (1 / LN(3) - 1 / LN(4))
HAND = {
    "gamma0": LN(10 / 3) / 3,  # (ln 4/3 + ln 5/3 + ln 3/2) / 3 = 0.401324
    "gamma0.5": (math.sqrt(0.7) * LN(4 / 3) + math.sqrt(0.4) * LN(5 / 3) + math.sqrt(0.3) * LN(3 / 2))
    / (math.sqrt(0.7) + math.sqrt(0.4) + math.sqrt(0.3)),  # 0.389644
    "gamma1": LN(4 / 3) / 2 + 2 / 7 * LN(5 / 3) + 3 / 14 * LN(3 / 2),  # 0.376676
    "lambda": (_D10 * LN(4 / 3) + _D12 * LN(5 / 3) + _D20 * LN(3 / 2)) / (_D10 + _D12 + _D20),  # 0.361417
    "dpo": LN(4 / 3),  # best (answer 1) vs worst (answer 0): 0.287682
}


@pytest.mark.parametrize(
    "overrides, value",
    [
        (("loss=perpo", "margin=uniform"), "gamma0"),
        (("loss=perpo", "margin=paper"), "gamma0.5"),
        (("loss=perpo", "margin=linear"), "gamma1"),
        (("loss=perpo", "margin=linear", "margin.gamma=0.5"), "gamma0.5"),
        (("loss=perpo", "margin=lambda"), "lambda"),
        # lipo and dpo take no pair weights: gamma must change nothing
        (("loss=lipo", "margin=uniform"), "gamma0"),
        (("loss=lipo", "margin=paper"), "gamma0"),
        (("loss=lipo", "margin=linear"), "gamma0"),
        (("loss=dpo", "margin=uniform"), "dpo"),
        (("loss=dpo", "margin=paper"), "dpo"),
        (("loss=dpo", "margin=linear"), "dpo"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, tuple) else v,
)
def test_config_selects_the_loss_with_the_hand_value(overrides, value, tiny, family, task):
    """beta = 1 and the [1, 3] list r = [0.2, 0.9, 0.5], s = [0, ln 3, ln 2] (policy = ref + s).
    Strict pairs (i over j), reward gap, term softplus(-(s_i - s_j)) = ln(1 + e^(s_j - s_i)):
    (1, 0): 0.7, ln(4/3); (1, 2): 0.4, ln(5/3); (2, 0): 0.3, ln(3/2). L = sum_ij w_ij term_ij with
    w normalized per list:
      gamma 0 (uniform, and lipo whatever gamma): w = 1/3 each -> ln(10/3)/3 = 0.401324
      gamma 0.5: w = sqrt(gap) / 2.016839 -> 0.389644;  gamma 1: w = 1/2, 2/7, 3/14 -> 0.376676
      lambda: w = Delta / sum Delta (values above HAND) -> 0.361417
      dpo (whatever gamma): best 1 vs worst 0 only -> ln(4/3) = 0.287682.
    The config goes through validate -> module_kwargs -> PerPOModule, whose ``list_loss`` is what
    training_step calls."""
    from hydra import compose, initialize_config_dir

    from perpo.config import validate
    from perpo.training.config import module_kwargs
    from perpo.training.module import PerPOModule

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="train"):
        cfg = compose(
            config_name="train",
            overrides=["paths.root=/nonexistent/perpo-root", "paths.output_dir=/nonexistent/perpo-out", "beta=1.0", *overrides],
        )
    validate(cfg)
    kwargs = module_kwargs(cfg, max_new_tokens=8, stored_lists=True)
    module = PerPOModule(copy.deepcopy(tiny[0]), tiny[1], family, task, None, **{**kwargs, "scoring": "naive"})
    ref = torch.tensor([[-5.0, -7.0, -6.0]], dtype=torch.float64)
    policy = ref + torch.tensor([[0.0, LN(3), LN(2)]], dtype=torch.float64)
    rewards = torch.tensor([[0.2, 0.9, 0.5]], dtype=torch.float64)
    loss = module.list_loss(policy, ref, rewards)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(HAND[value], rel=1e-9)


def test_hand_values_are_distinct():
    """Each case above pins one function: no two hand values coincide (to 1e-3)."""
    values = sorted(HAND.values())
    assert all(b - a > 1e-3 for a, b in zip(values, values[1:])), values
    assert HAND["lambda"] == pytest.approx(0.361417, abs=1e-6)


def test_config_and_losses_name_the_same_list_losses():
    """perpo.config validates loss= without importing torch, so it repeats the names; they must be
    exactly the names perpo.losses.list_loss accepts, and every registry loss must be reachable
    (lipo_lambda through loss=perpo margin=lambda)."""
    from perpo import config, losses

    assert config.LIST_LOSSES == losses.LIST_LOSSES
    assert config.ALL_LOSSES == (*losses.LIST_LOSSES, "sft")
    reached = set()
    for name in losses.LIST_LOSSES:
        for margin in ("power", "lambda") if name == "perpo" else ("power",):
            reached.add(losses.list_loss(name, beta=1.0, gamma=0.5, margin=margin).func.__name__)
    assert reached == {fn.__name__ for fn in losses.LOSSES.values()}
    for name in set(losses.LOSSES) - set(losses.LIST_LOSSES) | {"sft"}:
        with pytest.raises(ValueError, match="not a list loss"):
            losses.list_loss(name, beta=1.0, gamma=0.5)
