"""Step time of trainer=ddp_sim and trainer=fsdp_sim (2 CPU processes over gloo, half the batch
each) vs one process with the same global batch, on the tiny default (grounding, N=8).

    python benchmarks/ddp_sim.py            # ~3 min on a 2-core CPU; writes benchmarks/ddp_sim.md

Runs train.py twice, sequentially, with the same seed and a cached SFT base, and reads the
seconds per optimizer step that perpo's StepLog prints between steps 10 and STEPS (start-up,
the DDP launch and evaluation excluded). Each process gets OMP_NUM_THREADS = cores / processes,
so both runs use the whole machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = 40
GLOBAL_BATCH = 16
COMMON = [
    "listsize=8", f"trainer.max_steps={STEPS}", "trainer.val_check_interval=1000", "eval.before=false",
    "eval.after=false", "save_model=false", "checkpoint.enabled=false", "logger=none",
]  # fmt: skip


def run(cache: Path, run_dir: Path, threads: int, *overrides: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, "train.py", f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}", *COMMON, *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-4000:])
    text = (run_dir / "train.log").read_text()
    rates = [(int(s), float(r)) for s, r in re.findall(r"step (\d+)/\d+ ([0-9.]+)s/step", text)]
    later = [r for s, r in rates if s > 10]
    return sum(later) / len(later)


def main() -> None:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        run(cache, Path(tmp) / "warm", cores, "trainer.max_steps=1")  # the SFT base, cached
        start = time.time()
        one = run(cache, Path(tmp) / "one", cores, f"data.batch_size={GLOBAL_BATCH}")
        two = run(cache, Path(tmp) / "two", max(cores // 2, 1), f"data.batch_size={GLOBAL_BATCH // 2}", "trainer=ddp_sim")
        fsdp = run(cache, Path(tmp) / "fsdp", max(cores // 2, 1), f"data.batch_size={GLOBAL_BATCH // 2}", "trainer=fsdp_sim")
        seconds = time.time() - start
    lines = [
        f"# ddp_sim and fsdp_sim vs one process ({cores} CPU cores, global batch {GLOBAL_BATCH} prompts x N=8, steps 11-{STEPS})",
        "",
        "Command: `python benchmarks/ddp_sim.py`",
        "",
        "| run | s / step | ratio |",
        "|---|---|---|",
        f"| one process, batch {GLOBAL_BATCH}, {cores} threads | {one:.3f} | 1.00 |",
        f"| ddp_sim: 2 processes x batch {GLOBAL_BATCH // 2}, {max(cores // 2, 1)} thread(s) each | {two:.3f} | {two / one:.2f} |",
        f"| fsdp_sim: 2 processes x batch {GLOBAL_BATCH // 2}, {max(cores // 2, 1)} thread(s) each | {fsdp:.3f} | {fsdp / one:.2f} |",
        "",
        f"Total benchmark time {seconds:.0f} s. On one machine ddp_sim splits the same cores between two",
        "processes (plus a gloo all-reduce of the gradients each step), so the ratio stays near 1; it exists",
        "to test the multi-process code paths. Real speed-ups come from `trainer=ddp` over several GPUs.",
        "fsdp_sim also all-gathers every block's weights in every forward -- each generated token included,",
        "since generation runs synchronized -- and reduce-scatters the gradients: that is its extra cost here.",
    ]
    out = "\n".join(lines) + "\n"
    (REPO / "benchmarks" / "ddp_sim.md").write_text(out)
    print(out)


if __name__ == "__main__":
    main()
