"""benchmarks/gpu_check.py at its small shape (the code the one-GPU check runs at LLaVA-1.5-7B shapes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP_CONFIGS = ("copy", "adapter_off", "cached", "naive")


def test_gpu_check_small_writes_every_configuration(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}  # small shape on CPU
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--small", "--out-dir", str(tmp_path),
         "--budget-s", "300"],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["finished"] and result["env"]["small"]
    assert result["env"]["N"] == 4 and result["env"]["dtype"] == "float32"
    assert result["env"]["steps"] == {"warmup": 1, "timed": 3}
    items = result["items"]
    for name in STEP_CONFIGS:
        item = items[name]
        assert item["status"] == "ok", item
        assert item["s_per_step"] > 0 and len(item["step_times_s"]) == 3
    assert (items["copy"]["reference"], items["adapter_off"]["reference"], items["cached"]["reference"]) == (
        "copy", "adapter_off", "cached",
    )  # fmt: skip
    assert items["naive"]["scoring"] == "naive" and items["adapter_off"]["scoring"] == "shared"
    assert items["cached"]["reference_precompute_s"] > 0
    # same start, same stored lists: every variant follows the copy's losses
    assert set(result["loss_checks"]) == {"adapter_off", "cached", "naive"}
    assert max(result["loss_checks"].values()) < 1e-4
    for name in ("adapter_off/copy", "cached/copy", "shared/naive"):
        assert result["ratios"][name]["s_per_step"] > 0, result["ratios"]
    assert items["validation"]["status"] == "ok" and items["validation"]["total_s"] > 0
    assert set(items["validation"]["metrics"]) >= {"acc@0.5", "miou"}
    assert items["sampling_hf"]["status"] == "ok" and items["sampling_hf"]["s_per_call"] > 0
    assert items["vllm"]["status"] in ("ok", "skipped", "error")

    md = (tmp_path / "gpu_check.md").read_text()
    assert "python benchmarks/gpu_check.py" in md
    assert "| configuration | reference | scoring | N | s/step | peak GiB | weights GiB | status |" in md
    for name in STEP_CONFIGS:
        assert f"| {name} |" in md
    assert "| adapter_off/copy |" in md and "| cached/copy |" in md and "| shared/naive |" in md
    assert "in-loop validation" in md and "vLLM" in md


def test_gpu_check_budget_spent_marks_items_skipped(tmp_path):
    """A zero budget: the files are still written, every item recorded as skipped."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--small", "--out-dir", str(tmp_path),
         "--budget-s", "0"],
        capture_output=True, text=True, timeout=240, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["finished"]
    assert {item["status"] for item in result["items"].values()} == {"skipped"}
    assert "time budget" in result["items"]["copy"]["reason"]
    assert result["ratios"]["cached/copy"]["s_per_step"] is None
    assert "skipped: time budget" in (tmp_path / "gpu_check.md").read_text()
