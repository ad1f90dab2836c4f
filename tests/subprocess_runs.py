"""What the tests that run ``train.py`` / ``sample.py`` / ``evaluate.py`` as child processes share:
the repository root, the tiny default's SFT warm start at test size, the child's environment and
the run itself (failing with the end of its output)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The SFT warm start of the tiny default at test size (cached under each test's paths.cache_dir).
WARM_START = ["warmstart.steps=30", "warmstart.batch_size=16", "warmstart.lr=5e-3", "warmstart.warmup_steps=0"]


def script_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child run: one thread (bitwise reproducibility holds per
    thread count) and no HYDRA_FULL_ERROR (start-up errors are tested as short messages)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def script_cmd(script: str, *args: str) -> list[str]:
    return [sys.executable, script, *args]


def run_script(script: str, *args: str, env: dict | None = None, timeout: int = 500, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python <script> <args>`` in the repository; with ``check``, assert it exited 0."""
    proc = subprocess.run(
        script_cmd(script, *args), cwd=REPO, env=env or script_env(), capture_output=True, text=True, timeout=timeout
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc
