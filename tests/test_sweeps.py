"""Sweeps through Hydra's own plugins: an Optuna study over beta, gamma and lr that maximizes the
validation metric (3 short trials on the tiny default), and the SLURM launcher config composing
(it cannot launch without a cluster)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from subprocess_runs import REPO, WARM_START, script_env
import yaml

BUDGET = [
    *WARM_START, "data.sizes.train=32", "data.sizes.val=4", "data.sizes.test=8", "data.batch_size=4", "listsize=4",
    "data.min_margin=0.0", "eval.batch_size=8", "data.max_empty_steps=1000", "trainer.max_steps=2",
]  # fmt: skip




def test_optuna_sweep_maximizes_the_validation_metric(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", "--config-dir", "sweeps", "--config-name", "optuna", f"paths.cache_dir={tmp_path / 'c'}",
         *BUDGET, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"],
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna" and set(best["best_params"]) == {"beta", "margin.gamma", "optim.lr"}
    assert 0.02 <= best["best_params"]["beta"] <= 1.0 and best["best_params"]["margin.gamma"] in (0.0, 0.5, 1.0)
    assert 1e-5 <= best["best_params"]["optim.lr"] <= 1e-3
    assert 0.0 <= best["best_value"] <= 1.0  # val acc@0.5
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit())
    assert len(jobs) == 3
    for job in jobs:  # each trial evaluated on the val split only
        results = yaml.safe_load((job / "results.json").read_text())
        assert results["config"]["eval"]["split"] == "val" and "before" not in results
    assert "sweep: 3 finished, 0 failed" in (sweep / "sweep_summary.md").read_text()


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = subprocess.run(
        [sys.executable, "train.py", "--config-dir", "sweeps", "--config-name", "slurm", "trainer=ddp", "--cfg", "hydra"],
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["gpus_per_node"] == launcher["tasks_per_node"] == 8 and launcher["max_num_timeout"] == 3
