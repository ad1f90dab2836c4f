"""trainer=ddp_sim, fsdp_sim, deepspeed_zero2_sim and deepspeed_zero3_sim (2 CPU processes over
gloo; FSDP and ZeRO-3 shard every parameter, so generation runs synchronized) follow the same loss
curve as one process with the same global batch, also when one rank's lists are all dropped by the
spread filter, or every rank's; the sharded ones, killed and resumed, end where they would have.

Why it can: the data order is global batches of one seeded permutation, each rank taking its
slice (perpo.data.datamodule.GlobalBatchSampler); each record's N answers come from its own seed
(perpo.sampling.generation.record_seed), so they do not depend on the rank; DDP averages the two ranks'
gradients of their mean list losses, which equals the gradient of the mean over the global batch
when both ranks keep all their lists (a user reward that spreads every list guarantees it here);
logged train metrics are averaged over ranks (sync_dist). When ranks keep different numbers of
lists, each rank's loss is its lists' sum * world / (lists kept in the global batch), so the
ranks' mean is still the global mean; a rank with none runs a zero-weight step (perpo.training.module).
What differs is float rounding of other batch shapes, hence the tolerance.
"""

from __future__ import annotations

import csv
import os
import subprocess
import time
from pathlib import Path

import pytest
from subprocess_runs import REPO, WARM_START, run_script, script_cmd, script_env

# Two-process runs: about 11 of the suite's 21 minutes before the cases were merged. `pytest -m "not slow"` leaves them out.
pytestmark = pytest.mark.slow


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


STEPS = 4
VAL_EVERY = 2  # validation runs at steps 2 and 4: 5 val records, so rank 1's share is padded
BUDGET = [
    *WARM_START, "data.sizes.train=32", "data.sizes.val=5", "data.sizes.test=8", "listsize=4", "data.min_margin=0.0",
    "data.max_empty_steps=1000", "eval.batch_size=8", "optim.lr=1e-3", "eval.image_check=false",
    "+reward.fn._target_=tests.user_rewards.length_reward", f"trainer.max_steps={STEPS}",
    f"trainer.val_check_interval={VAL_EVERY}", "trainer.log_every_n_steps=1", "checkpoint.enabled=false",
]  # fmt: skip


def _train(cache: Path, run_dir: Path, *overrides: str, env_extra: dict | None = None) -> float:
    start = time.perf_counter()
    run_script(
        "train.py", f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}", *BUDGET, *overrides,
        env=script_env(**(env_extra or {})),
    )  # fmt: skip
    return time.perf_counter() - start


def _curve(run_dir: Path, key: str) -> list[float]:
    with (run_dir / "csv" / "version_0" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get(key)]
    return [float(r[key]) for r in sorted(rows, key=lambda r: int(r["step"]))]


def _param(trainer: str, *more: str):
    needs = pytest.mark.skipif(trainer.startswith("deepspeed") and not _has("deepspeed"), reason="pip install deepspeed")
    return pytest.param(trainer, *more, marks=needs, id="-".join((trainer, *more)))


# The 2-process strategies on CPU: DDP, FSDP (torch), DeepSpeed ZeRO-2 and ZeRO-3 (DeepSpeed's CPU
# accelerator; perpo.training.strategies.CPUDeepSpeedStrategy). ZeRO-3 and FSDP shard the parameters.
# Each strategy follows one process in one run with flat lists (a two-process run costs 25-60 s
# here, most of it start-up): steps 1 and 2 (counting from 0) drop lists on purpose, steps 0 and 3
# train on both ranks, so one run checks both the plain path and the dropped-list path. DDP and FSDP
# run "all" (step 1: rank 1 keeps none; step 2: no rank keeps any, so no update anywhere, as one
# process); DeepSpeed steps its optimizer on zero gradients at an all-flat step, so ZeRO-2 and
# ZeRO-3 run "rank" alone.
FLAT_CASES = [
    _param("ddp_sim", "all"), _param("fsdp_sim", "all"), _param("deepspeed_zero2_sim", "rank"),
    _param("deepspeed_zero3_sim", "rank"),
]  # fmt: skip
# The sharded strategies' flat runs checkpoint every 2 steps: they are the uninterrupted runs that
# test_multi_process_killed_and_resumed_ends_identical compares a killed-and-resumed run against.
RESUMED_RUNS = [("fsdp_sim", "all"), ("deepspeed_zero3_sim", "rank")]
RESUMED = [_param(*case) for case in RESUMED_RUNS]
CHECKPOINTS = ("checkpoint.enabled=true", "checkpoint.every_n_steps=2")


def _case(trainer: str, flat: str) -> tuple[tuple[str, ...], dict]:
    """One run's overrides and extra environment. flat: "rank" (rank 1 keeps no list at step 1)
    or "all" (that, and no rank keeps any at step 2); trainer "one": one process, same global batch."""
    overrides = ("++reward.fn._target_=tests.user_rewards.length_reward_flat_at", "data.min_margin=0.01")
    env = {"PERPO_TEST_FLAT_POSITIONS": _flat_positions(every_rank=flat == "all")}
    if trainer == "one":
        return (*overrides, "data.batch_size=4"), env
    checkpoints = CHECKPOINTS if (trainer, flat) in RESUMED_RUNS else ()
    return (*overrides, "data.batch_size=2", f"trainer={trainer}", *checkpoints), env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(root, run): ``run(trainer, flat)`` trains that case on first use and returns its folder."""
    root = tmp_path_factory.mktemp("ddp")
    _train(root / "cache", root / "warm", "trainer.max_steps=1")  # the SFT base, cached for every run
    done: dict[str, Path] = {"warm": root / "warm"}

    def run(trainer: str, flat: str) -> Path:
        name = f"flat_{flat}_{trainer}"
        if name not in done:
            overrides, env = _case(trainer, flat)
            _train(root / "cache", root / name, *overrides, env_extra=env)
            done[name] = root / name
        return done[name]

    return root, run


def _flat_positions(every_rank: bool) -> str:
    """Train positions whose lists come out flat (dropped): rank 1's whole share of step 1 and, if
    ``every_rank``, the whole global batch of step 2 (GlobalBatchSampler with the run's seed 42,
    global batch 4)."""
    from perpo.data.datamodule import GlobalBatchSampler

    shares = [list(GlobalBatchSampler(32, 2, seed=42, rank=r, world_size=2)) for r in (0, 1)]
    return ",".join(str(p) for p in shares[1][1] + (shares[0][2] + shares[1][2] if every_rank else []))


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(next((run_dir / "model").glob("*.safetensors")))


def _largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize(("trainer", "flat"), FLAT_CASES)
def test_a_rank_without_lists_keeps_in_step_and_the_global_mean(runs, trainer, flat):
    """Step 1: rank 1 keeps no list (it runs a zero-weight step, rank 0 weighs its lists by
    world / kept). "all": at step 2 no rank keeps any either. Steps 0 and 3 train both ranks. Same
    loss curve, logged metrics, list counts, validation and final weights as one process with the
    same global batch (under FSDP / ZeRO-3 gathered from the two ranks' shards:
    perpo.training.strategies.gather_full_policy), and no hang."""
    import json

    root, run = runs
    single_dir, multi_dir = run("one", flat), run(trainer, flat)
    for key in ("train/loss", "train/kept_fraction", "train/pair_accuracy", "train/reward_mean"):
        single, multi = _curve(single_dir, key), _curve(multi_dir, key)
        assert len(single) == len(multi) == STEPS, (key, single, multi)
        assert multi == pytest.approx(single, abs=2e-4), key
    assert len(set(_curve(single_dir, "train/loss"))) > 1  # the policy moved: not a flat curve
    # In-loop validation ran (steps 2 and 4), each rank on its own share of the 5 val records;
    # the metrics summed over ranks are one process's on the whole set (counts: exact).
    for key in ("val/acc@0.5", "val/parse_rate", "val/miou"):
        single, multi = _curve(single_dir, key), _curve(multi_dir, key)
        assert len(single) == len(multi) == STEPS // VAL_EVERY, (key, single, multi)
        assert multi == (single if key != "val/miou" else pytest.approx(single, abs=1e-6)), key
    kept = _curve(multi_dir, "train/kept_fraction")
    assert kept[1] <= 0.5, kept  # the flat step happened as planned
    assert kept[2] == 0.0 if flat == "all" else kept[2] > 0.0, kept
    assert kept[0] > 0.0 and kept[3] > 0.0, kept  # no flat positions at steps 0 and 3: the plain path
    largest = _largest_difference(_weights(single_dir), _weights(multi_dir))
    moved = _largest_difference(_weights(single_dir), _weights(root / "warm"))
    assert largest < 1e-4 < moved, (largest, moved)
    one, two = (json.loads((d / "results.json").read_text()) for d in (single_dir, multi_dir))
    assert two["list_counters"] == one["list_counters"]  # summed over the two ranks
    assert one["list_counters"]["lists_kept"] <= 16 - (6 if flat == "all" else 2)  # the flat lists were dropped
    assert two["after"] == pytest.approx(one["after"], abs=0.02)  # 8 test items: one item is 0.125
    print(f"{trainer} ({flat}): largest weight difference to one process {largest:.2e} (moved {moved:.2e})")


def test_fsdp_with_lora_and_the_adapter_off_reference(runs):
    """FSDP units mixing frozen base weights and trainable LoRA matrices (use_orig_params), the
    reference being the same sharded policy with its adapter disabled: same loss curve and merged
    final weights as one process."""
    root, _ = runs
    lora = ("+model.lora={enabled: true, r: 4, alpha: 8, dropout: 0.0, target_modules: null, save: merged}",
            "reference=adapter_off")  # fmt: skip
    _train(root / "cache", root / "lora_one", *lora, "data.batch_size=4")
    _train(root / "cache", root / "lora_fsdp", *lora, "data.batch_size=2", "trainer=fsdp_sim")
    single, multi = _curve(root / "lora_one", "train/loss"), _curve(root / "lora_fsdp", "train/loss")
    assert len(single) == len(multi) == STEPS and multi == pytest.approx(single, abs=2e-4)
    assert len(set(single)) > 1
    largest = _largest_difference(_weights(root / "lora_one"), _weights(root / "lora_fsdp"))
    assert largest < 1e-4, largest


# The sharded strategies: FSDP gathers the weights and optimizer state from both ranks' shards into
# one file, ZeRO-3 writes a folder of shards (ZeRO-2 resumes as ZeRO-3). DDP's checkpoint is the
# one-process file of tests/test_resume.py, and the multi-process parts (data position, per-record
# seeds, rank-summed counters) are the same code as under FSDP.
@pytest.mark.parametrize(("trainer", "flat"), RESUMED)
def test_multi_process_killed_and_resumed_ends_identical(runs, trainer, flat):
    """Both ranks killed (SIGKILL to the process group) after the step-2 checkpoint, then
    resume=true: the same final weights and summed list counters as the uninterrupted flat run
    (the data position, the per-record sampling seeds and the rank-summed counters all resume;
    under FSDP the checkpoint holds the weights and optimizer state gathered from both ranks' shards)."""
    import json
    import signal

    import torch

    root, run = runs
    full = run(trainer, flat)  # uninterrupted, checkpointed every 2 steps
    overrides, env = _case(trainer, flat)
    killed = root / f"killed_{trainer}"
    proc = subprocess.Popen(
        script_cmd("train.py", f"paths.cache_dir={root / 'cache'}", f"hydra.run.dir={killed}", *BUDGET, *overrides),
        cwd=REPO, env=script_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and not last.exists() and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # rank 0 and the rank-1 process it launched
    proc.wait()
    assert not (killed / "results.json").exists()
    state = next(last.glob("checkpoint/*model_states.pt")) if last.is_dir() else last  # DeepSpeed: a folder
    assert 2 <= torch.load(state, weights_only=False)["global_step"] < STEPS
    _train(root / "cache", killed, *overrides, "resume=true", env_extra=env)
    assert _largest_difference(_weights(full), _weights(killed)) == 0.0
    uninterrupted, resumed = (json.loads((d / "results.json").read_text()) for d in (full, killed))
    assert resumed["list_counters"] == uninterrupted["list_counters"]
    assert uninterrupted["list_counters"]["lists_seen"] == STEPS * 4  # global batch 4
    assert 0 < uninterrupted["list_counters"]["lists_kept"] < uninterrupted["list_counters"]["lists_seen"]
