"""Checkpoints and resume (perpo/training/checkpointing.py): a run killed mid-training -- SIGKILL, or
SIGTERM as schedulers send -- and continued with ``resume=true`` ends with exactly the weights,
metrics and list counters of a run never interrupted (CPU, fixed seed, one thread).

A user reward that spreads every list (``tests/user_rewards.py``) makes every step an update,
so any lost or repeated step, optimizer state, scheduler step, RNG draw or data position would
change the final weights.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from subprocess_runs import REPO, WARM_START, script_env
import torch

STEPS = 8
BUDGET = [
    *WARM_START, "data.sizes.train=40", "data.sizes.val=4", "data.sizes.test=8", "data.batch_size=4", "listsize=4",
    "data.min_margin=0.0", "data.max_empty_steps=1000", "eval.batch_size=8", "optim.lr=1e-3",
    "+reward.fn._target_=tests.user_rewards.length_reward", f"trainer.max_steps={STEPS}",
    "checkpoint.every_n_steps=2", "trainer.val_check_interval=4",
]  # fmt: skip


def _cmd(cache: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "train.py", f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}", *BUDGET, *extra]




def _run(cache: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(cache, run_dir, *extra), cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _interrupt(cache: Path, run_dir: Path, sig: int) -> int:
    """Start a run, send ``sig`` once its first checkpoint is on disk; returns the exit code."""
    proc = subprocess.Popen(_cmd(cache, run_dir), cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline and not last.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(sig)
    err, _ = proc.communicate(timeout=300)
    assert not (run_dir / "results.json").exists(), "the run finished before it was interrupted"
    return proc.returncode, err


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for shard in sorted((run_dir / "model").glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    cache = root / "cache"
    _run(cache, root / "full")
    return root, cache


def _same_as_uninterrupted(root: Path, run_dir: Path) -> float:
    full, resumed = _weights(root / "full"), _weights(run_dir)
    assert full.keys() == resumed.keys()
    largest = max((full[k] - resumed[k]).abs().max().item() for k in full)
    a, b = _results(root / "full"), _results(run_dir)
    assert b["list_counters"] == a["list_counters"]
    assert b["list_counters"]["lists_kept"] >= STEPS * 2  # every step updated the policy
    assert b["after"] == a["after"] and b["before"] == a["before"]
    return largest


def test_uninterrupted_run_writes_last_checkpoint(uninterrupted):
    root, _ = uninterrupted
    ckpt = torch.load(root / "full" / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == STEPS
    assert not any(k.startswith("reference.") for k in ckpt["state_dict"])  # rebuilt on resume, not stored
    assert {"rng", "counters"} <= set(ckpt["perpo"])
    assert not list((root / "full" / "checkpoints").glob(".last.ckpt.*"))  # no temporary left behind


def test_sigkill_mid_run_then_resume_gives_identical_weights(uninterrupted):
    root, cache = uninterrupted
    run_dir = root / "killed"
    _interrupt(cache, run_dir, signal.SIGKILL)
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert 2 <= step < STEPS
    _run(cache, run_dir, "resume=true")
    assert "resuming from" in (run_dir / "train.log").read_text()
    assert _same_as_uninterrupted(root, run_dir) == 0.0


def test_sigterm_saves_a_checkpoint_and_resume_finishes_identically(uninterrupted):
    root, cache = uninterrupted
    run_dir = root / "terminated"
    code, err = _interrupt(cache, run_dir, signal.SIGTERM)
    assert code == 143, err[-3000:]
    assert "SIGTERM at step" in err and "resume=true" in err
    _run(cache, run_dir, "resume=true")
    assert _same_as_uninterrupted(root, run_dir) == 0.0


def test_resume_without_a_checkpoint_names_the_folder(tmp_path):
    proc = subprocess.run(
        _cmd(tmp_path / "cache", tmp_path / "nothing", "resume=true"), cwd=REPO, env=script_env(), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"{tmp_path / 'nothing' / 'checkpoints' / 'last.ckpt'} does not exist" in proc.stderr


def test_resume_with_another_model_shape_is_refused_in_perpo_words(uninterrupted):
    """ckpt_path from a run of the default tiny model, resumed with a wider text model: exit 2 and
    one sentence naming a parameter whose shape differs (before: torch's wall of size-mismatch
    lines from deep inside load_state_dict)."""
    root, cache = uninterrupted
    ckpt = root / "full" / "checkpoints" / "last.ckpt"
    proc = subprocess.run(
        _cmd(cache, root / "wider", f"ckpt_path={ckpt}", "model.arch.text_hidden=160", "warmstart.enabled=false"),
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "perpo: the checkpoint was written for another model: policy." in proc.stderr
    assert "has shape" in proc.stderr and "resume with the model.* settings" in proc.stderr
    assert "Traceback" not in proc.stderr and "size mismatch" not in proc.stderr
