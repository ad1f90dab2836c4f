"""benchmarks/vs_trl.py at a tiny setting: trl's DPOTrainer and perpo side by side (skipped without trl)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

ROOT = Path(__file__).resolve().parents[1]


def test_vs_trl_writes_ratio_rows(tmp_path):
    out = tmp_path / "vs_trl.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "vs_trl.py"), "--models", "tiny", "--sizes", "3",
           "--answer-tokens", "4", "--repeats", "1", "--micro-batch", "2", "--timed-batches", "1", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, timeout=300, capture_output=True)
    text = out.read_text()
    ratio_rows = [line for line in text.splitlines() if line.startswith("| ratio tiny | 3 |")]
    assert len(ratio_rows) == 1, text
    cells = [c.strip() for c in ratio_rows[0].strip("|").split("|")]
    assert len(cells) == 7 and all(c.endswith("x") or "x (tokens" in c for c in cells[2:]), cells
    # all pairs at N = 3 is 3 pairs in 2 micro-batches of 2: more than --timed-batches, so extrapolated (~)
    assert "| 3 | trl all pairs | 3 | 6 |" in text and "| ~" in text
    assert "max |difference| = " in text
    diff = float(text.split("max |difference| = ")[1].split()[0])
    assert diff < 1e-3  # trl's and perpo's log-probs of the same answers agree
