"""The real entry point trains a few steps: ``python train.py ...`` in a subprocess, on a tiny
budget, with the cache and the run folders in a temporary directory.

One module-scoped cache folder is shared by every run here, so the SFT warm start is paid once
(the first run) and reused by the others -- which is itself one of the checks. The collapse
check at the end drives ``PerPOModule.training_step`` in-process, without a Trainer (Lightning's
``self.log`` then only warns), on the session tiny model from ``conftest.py``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Everything that feeds the warm-start cache key (model, task, data sizes/seed, warmstart, seed)
# is the same in every run below, so they all share one SFT base.
TINY_BUDGET = [
    "warmstart.steps=30",
    "warmstart.batch_size=16",
    "warmstart.lr=5e-3",
    "warmstart.warmup_steps=0",
    "data.sizes.train=32",
    "data.sizes.val=4",
    "data.sizes.test=8",
    "data.batch_size=4",
    "listsize=4",
    "data.min_margin=0.0",
    "data.max_empty_steps=1000",
    "optim.lr=1e-2",
    "eval.batch_size=8",
    "trainer.log_every_n_steps=1",  # the default (5) would log no train row in a 3-step run
]
REUSE_LINE = "reusing the cached base"
GROUNDING_METRICS = ("acc@0.5", "miou", "parse_rate")


def train(*overrides: str, cache: Path, flags: tuple = (), env: dict | None = None, timeout: int = 540):
    """Run train.py; returns (CompletedProcess, wall seconds)."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    # One intra-op thread: the tiny model gains nothing from more, and a busy CPU shared with
    # other processes makes oversubscribed OpenMP threads very slow.
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env.update(env or {})
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "train.py", *flags, f"paths.cache_dir={cache}", *TINY_BUDGET, *overrides],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, f"train.py {' '.join(overrides)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc, seconds


def log_text(proc: subprocess.CompletedProcess, run_dir: Path) -> str:
    """stdout + stderr + Hydra's job log file."""
    log_file = run_dir / "train.log"
    return proc.stdout + proc.stderr + (log_file.read_text() if log_file.exists() else "")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("e2e") / "cache"


@pytest.fixture(scope="module")
def first_run(cache):
    run_dir = cache.parent / "run1"
    proc, seconds = train(
        f"hydra.run.dir={run_dir}", "trainer.max_steps=3", "trainer.val_check_interval=3", cache=cache
    )
    return run_dir, proc, seconds


@pytest.fixture(scope="module")
def second_run(cache, first_run):
    """The same run again (only the run folder differs): the warm start must come from the cache."""
    run_dir = cache.parent / "run2"
    proc, seconds = train(
        f"hydra.run.dir={run_dir}", "trainer.max_steps=3", "trainer.val_check_interval=3", cache=cache
    )
    return run_dir, proc, seconds


def read_results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    assert path.is_file(), f"no results.json in {run_dir}: {sorted(p.name for p in run_dir.iterdir())}"
    return json.loads(path.read_text())


def sft_bases(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "sft_base").iterdir() if not p.name.startswith("."))


# -- 1. the default run ---------------------------------------------------------------------------


def test_default_run_writes_results(first_run):
    run_dir, _, _ = first_run
    results = read_results(run_dir)
    assert {"task", "before", "after", "config", "list_counters"} <= set(results)
    assert results["task"] == "grounding"
    assert results["loss"] == "perpo"
    for phase in ("before", "after"):
        for key in GROUNDING_METRICS:
            value = results[phase][key]
            assert isinstance(value, float) and 0.0 <= value <= 1.0, (phase, key, value)
    for key in ("nll_true_images", "nll_shuffled_images"):
        value = results["before"][key]
        assert isinstance(value, float) and value > 0, (key, value)
    config = results["config"]
    assert config["listsize"] == 4
    assert config["trainer"]["max_steps"] == 3
    assert config["paths"]["output_dir"] == str(run_dir)
    counters = results["list_counters"]
    assert counters["lists_seen"] == 3 * 4  # 3 steps x 4 prompts
    assert counters["answers"] == 3 * 4 * 4  # x listsize answers
    assert 0 <= counters["lists_kept"] <= counters["lists_seen"]
    assert 0 <= counters["unparsed"] <= counters["answers"]
    assert (run_dir / ".hydra" / "config.yaml").is_file()


# -- 2. the warm start is cached and reused ------------------------------------------------------


def test_warm_start_is_cached_and_reused(cache, first_run, second_run):
    run1, proc1, _ = first_run
    run2, proc2, _ = second_run
    bases = sft_bases(cache)
    assert len(bases) == 1, bases
    base = bases[0]
    assert (base / "config.json").is_file() and (base / "model.safetensors").is_file()
    assert base.name.startswith("tiny-grounding-")
    assert list(cache.glob("tiny-llava-v1*/config.json")), "the tiny model was not built in the cache"

    first_log, second_log = log_text(proc1, run1), log_text(proc2, run2)
    assert REUSE_LINE not in first_log
    assert "SFT warm start done" in first_log
    assert REUSE_LINE in second_log
    assert "SFT warm start done" not in second_log
    assert REUSE_LINE in (run2 / "train.log").read_text()  # Hydra's job log has it too

    r1, r2 = read_results(run1), read_results(run2)
    assert r1["base"] == r2["base"] == str(base)


def test_identical_runs_give_identical_results(first_run, second_run):
    """Same seed, same cached base: the reloaded base behaves exactly like the fresh one."""
    r1, r2 = read_results(first_run[0]), read_results(second_run[0])
    assert r2["before"] == r1["before"]
    assert r2["list_counters"] == r1["list_counters"]
    assert r2["after"] == r1["after"]


# -- 3. the final policy is saved, loads with plain transformers, and moved ---------------------


def test_final_policy_saved_loadable_and_trained(cache, first_run):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    run_dir, _, _ = first_run
    model_dir = run_dir / "model"
    assert (model_dir / "config.json").is_file()
    assert (model_dir / "model.safetensors").is_file()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".model.")]  # no temp leftovers

    results = read_results(run_dir)
    assert results["list_counters"]["lists_kept"] > 0, "no list was kept: the policy cannot have moved"

    policy = AutoModelForImageTextToText.from_pretrained(model_dir)
    AutoProcessor.from_pretrained(model_dir)  # the processor was saved alongside
    base = AutoModelForImageTextToText.from_pretrained(results["base"])
    policy_sd, base_sd = policy.state_dict(), base.state_dict()
    assert policy_sd.keys() == base_sd.keys()
    moved = [k for k in policy_sd if not torch.equal(policy_sd[k], base_sd[k])]
    assert moved, "the saved policy equals the SFT base: no parameter moved"
    assert all(torch.isfinite(v).all() for v in policy_sd.values() if v.is_floating_point())


# -- 4. the CSV logger ---------------------------------------------------------------------------


def test_csv_logger_wrote_train_metrics(first_run):
    run_dir, _, _ = first_run
    metrics = run_dir / "csv" / "version_0" / "metrics.csv"
    assert metrics.is_file()
    with metrics.open() as f:
        rows = list(csv.DictReader(f))
    assert rows
    columns = set(rows[0])
    assert {"train/reward_mean", "train/kept_fraction", "step"} <= columns, sorted(columns)
    values = [float(r["train/reward_mean"]) for r in rows if r.get("train/reward_mean")]
    assert values and all(0.0 <= v <= 1.0 for v in values)
    kept = [float(r["train/kept_fraction"]) for r in rows if r.get("train/kept_fraction")]
    assert kept and all(0.0 <= v <= 1.0 for v in kept)
    assert any(r.get("val/miou") for r in rows), "validation at step 3 logged no val/miou"


# -- 5. loss=sft and loss=dpo end to end (one Hydra multirun, shared cache) ---------------------


def test_sft_and_dpo_run_end_to_end(cache, first_run):
    sweep = cache.parent / "multi"
    proc, _ = train(
        "loss=sft,dpo", f"hydra.sweep.dir={sweep}", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "eval.before=false", cache=cache, flags=("-m",),
    )  # fmt: skip
    assert len(sft_bases(cache)) == 1  # both jobs reused the base of the first run
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0-grounding-sft-seed42", "1-grounding-dpo-seed42"], jobs
    for job, loss in zip(jobs, ("sft", "dpo")):
        assert REUSE_LINE in (job / "train.log").read_text()
        results = read_results(job)
        assert results["loss"] == loss == results["config"]["loss"]["name"]
        assert "before" not in results
        for key in GROUNDING_METRICS:
            assert isinstance(results["after"][key], float)
        assert (job / "model" / "model.safetensors").is_file()
        assert (job / "csv" / "version_0" / "metrics.csv").is_file()
        counters = results["list_counters"]
        if loss == "sft":
            assert counters["lists_seen"] == 0  # SFT samples no lists
        else:
            assert counters["lists_seen"] == 2 * 4


def test_every_task_and_the_other_loggers_run_end_to_end(cache, tmp_path):
    """task=ocr,counting x logger=tensorboard,none as one multirun: 4 jobs, 2 warm starts."""
    sweep = tmp_path / "tasks"
    train(
        "task=ocr,counting", "logger=tensorboard,none", f"hydra.sweep.dir={sweep}", "trainer.max_steps=2",
        "trainer.val_check_interval=2", "save_model=false", cache=cache, flags=("-m",),
    )  # fmt: skip
    expected = {"ocr": ("edit_distance", "precision", "recall", "f1", "bleu"), "counting": ("accuracy", "mae", "parse_rate")}
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 4, jobs
    for job in jobs:
        results = read_results(job)
        task, logger = results["task"], results["config"]["logger"].get("_target_")
        assert results["config"]["reward"]["name"] == {"ocr": "edit", "counting": "count"}[task]
        for key in expected[task]:
            assert isinstance(results["before"][key], float) and isinstance(results["after"][key], float)
        assert results["list_counters"]["lists_seen"] == 2 * 4
        has_events = any(job.rglob("events.out.tfevents.*"))
        assert has_events == (logger is not None and logger.endswith("TensorBoardLogger")), (job, logger)


# -- 7. logger=wandb offline, no login ----------------------------------------------------------


def test_multirun_with_a_failing_job_and_wandb_offline(cache, first_run, tmp_path):
    """A 4-job multirun with W&B offline where job 2 is invalid (beta=-1): the other 3 finish,
    each with its own W&B run holding the samples table, the drawn sample images and the reward
    histogram; the sweep summary lists 3 finished and the failed job with its reason; no login."""
    sweep_dir = tmp_path / "sweep"
    wandb_dir = tmp_path / "wandb-dir"
    wandb_dir.mkdir()
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_dir),
        "WANDB_API_KEY": "",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        "WANDB_SILENT": "true",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "train.py", "-m", f"paths.cache_dir={cache}", *TINY_BUDGET, f"hydra.sweep.dir={sweep_dir}",
         "logger=wandb", "trainer.max_steps=1", "trainer.val_check_interval=1", "eval.after=false", "save_model=false",
         "eval.image_check=false", "beta=0.1,0.2,-1,0.3"],
        cwd=REPO, env={**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, **env},
        capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    assert proc.returncode == 1  # Hydra reports the failed job once all jobs have run
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert [j["status"] for j in summary] == ["finished", "finished", "failed", "finished"]
    assert "beta=-1: beta must be > 0" in summary[2]["error"]
    assert "sweep: 3 finished, 1 failed" in (sweep_dir / "sweep_summary.md").read_text()
    runs = sorted(sweep_dir.rglob("offline-run-*"))
    assert len(runs) == 3, runs  # one W&B run per finished job
    for run in runs:
        assert list(run.rglob("samples/lists_*.table.json")), f"no samples table in {run}"
        assert list(run.rglob("media/images/samples/images_*.png")), f"no sample images in {run}"
    table = json.loads(next(runs[0].rglob("samples/lists_*.table.json")).read_text())
    assert table["columns"] == ["id", "image", "prompt", "target", "answers", "rewards", "best", "kept"]
    assert len(table["data"]) == 4 and all(len(row[5]) == 4 for row in table["data"])  # 4 lists of N=4 rewards
    # The run's copy of the table names its image cells only ("Image"); the table itself, images
    # included, goes to W&B as the run's table artifact, staged until `wandb sync` uploads it.
    assert b"samples/lists.table.json" in next(runs[0].glob("*.wandb")).read_bytes()
    staged = list((tmp_path / "wandb-data").rglob("artifacts/staging/*"))
    assert sum(1 for f in staged if f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n") >= 3 * 4  # 4 drawn images per run
    assert "wandb login" not in proc.stderr.lower()


# -- 6. collapse detection, in-process -----------------------------------------------------------
# Outside a Trainer, Lightning's self.log warns and does nothing; that is expected here.
no_trainer_log_warning = pytest.mark.filterwarnings("ignore:You are trying to .self.log:UserWarning")


def _collapse_module(fresh_model, processor, family, task, reward_fn, max_empty_steps=3):
    from perpo.training.config import ListConfig
    from perpo.training.module import PerPOModule
    from perpo.sampling.generation import SamplingConfig

    return PerPOModule(
        fresh_model, processor, family, task, reward_fn, loss="perpo",
        lists=ListConfig(
            listsize=2, min_margin=0.1, max_empty_steps=max_empty_steps,
            sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=6),
        ),
    )  # fmt: skip


@pytest.fixture
def two_records():
    from perpo.data import make_records

    ds = make_records("grounding", 2, seed=0)
    return [ds[i] for i in range(len(ds))]


@no_trainer_log_warning
def test_collapse_detection_raises_after_max_empty_steps(
    fresh_model, processor, family, task, two_records
):
    from perpo.training.module import TrainingCollapsed

    torch.manual_seed(0)
    module = _collapse_module(fresh_model, processor, family, task, lambda completion, record: None)
    assert module.training_step(two_records, 0) is None
    assert module.training_step(two_records, 1) is None
    with pytest.raises(TrainingCollapsed) as info:
        module.training_step(two_records, 2)
    message = str(info.value)
    assert "min_margin" in message
    assert "learning rate" in message
    assert "3 steps in a row" in message
    assert "12 of 12" in message  # 3 steps x 2 lists x 2 answers, none parsed
    assert module.counters["lists_seen"] == 6 and module.counters["lists_kept"] == 0


@no_trainer_log_warning
def test_a_kept_list_resets_the_collapse_counter(fresh_model, processor, family, task, two_records):
    from perpo.training.module import TrainingCollapsed

    torch.manual_seed(0)
    state = {"mode": "none", "calls": 0}

    def reward(completion, record):
        state["calls"] += 1
        if state["mode"] == "none":
            return None
        return float(state["calls"] % 2)  # answers of a list alternate 0, 1: spread 1

    module = _collapse_module(fresh_model, processor, family, task, reward)
    assert module.training_step(two_records, 0) is None
    assert module.training_step(two_records, 1) is None
    state["mode"] = "spread"
    loss = module.training_step(two_records, 2)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad and torch.isfinite(loss)
    state["mode"] = "none"
    assert module.training_step(two_records, 3) is None
    assert module.training_step(two_records, 4) is None
    with pytest.raises(TrainingCollapsed):
        module.training_step(two_records, 5)


@no_trainer_log_warning
def test_constant_rewards_also_collapse(fresh_model, processor, family, task, two_records):
    """Every answer parses but scores the same: no spread, so every list is dropped too."""
    from perpo.training.module import TrainingCollapsed

    module = _collapse_module(fresh_model, processor, family, task, lambda c, r: 0.5, max_empty_steps=1)
    with pytest.raises(TrainingCollapsed, match="min_margin=0.1"):
        module.training_step(two_records, 0)
    assert module.counters["unparsed"] == 0


# -- 8. precision and LoRA through the same entry point -------------------------------------------


def test_bf16_mixed_precision_trains_with_finite_losses(cache, first_run):
    """trainer.precision=bf16-mixed (Lightning AMP): sampling, scoring and the loss run under
    autocast; the logged losses are finite and the saved policy moved."""
    run_dir = cache.parent / "bf16"
    train(f"hydra.run.dir={run_dir}", "trainer.max_steps=3", "trainer.precision=bf16-mixed", cache=cache)
    results = read_results(run_dir)
    assert results["list_counters"]["lists_kept"] > 0
    with (run_dir / "csv" / "version_0" / "metrics.csv").open() as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert losses and all(math.isfinite(v) for v in losses)


def test_lora_with_adapter_off_reference_exports_a_plain_checkpoint(cache, first_run):
    """model.lora on the tiny default with reference=adapter_off: only adapter and projector train;
    the merged export loads with plain transformers and differs from the base."""
    from transformers import AutoModelForImageTextToText

    run_dir = cache.parent / "lora"
    train(
        f"hydra.run.dir={run_dir}", "trainer.max_steps=3", "reference=adapter_off",
        "+model.lora={enabled: true, r: 4, alpha: 8, dropout: 0.0, target_modules: null, save: merged}",
        cache=cache,
    )  # fmt: skip
    results = read_results(run_dir)
    assert results["list_counters"]["lists_kept"] > 0
    policy = AutoModelForImageTextToText.from_pretrained(run_dir / "model")
    base = AutoModelForImageTextToText.from_pretrained(results["base"])
    p, b = policy.state_dict(), base.state_dict()
    assert p.keys() == b.keys()  # merged: no lora_ keys left
    moved = {k for k in p if not torch.equal(p[k], b[k])}
    assert any("language_model" in k for k in moved)
    assert not any("vision_tower" in k for k in moved)  # the tower stays frozen


# -- 9. evaluate.py and the blank-image switch ------------------------------------------------------


def run_evaluate(*overrides: str, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, "evaluate.py", f"paths.cache_dir={cache}", *TINY_BUDGET, *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"evaluate.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_evaluate_writes_metrics_table_and_predictions(cache, first_run):
    run_dir, _, _ = first_run
    out = cache.parent / "eval_model"
    run_evaluate(f"hydra.run.dir={out}", f"eval.checkpoint={run_dir / 'model'}", cache=cache)
    report = json.loads((out / "eval.json").read_text())
    assert report["split"] == "test" and report["num_records"] == 8 and report["blank_image"] is False
    assert report["checkpoint"] == str(run_dir / "model")
    # the same checkpoint and split as the training run's "after" evaluation: the same numbers
    after = read_results(run_dir)["after"]
    for key in GROUNDING_METRICS:
        assert report["metrics"][key] == pytest.approx(after[key]), key
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    # grounding: the box also in the original frame (box, box_pixels) for external tools
    assert len(predictions) == 8 and all(set(p) == {"id", "prediction", "score", "box", "box_pixels", "width", "height"} for p in predictions)
    # the per-item score is the item's IoU: its mean is the miou of eval.json
    assert sum(p["score"] for p in predictions) / 8 == pytest.approx(report["metrics"]["miou"])
    table = (out / "eval.md").read_text()
    assert "| acc@0.5 |" in table and "split test (8 records)" in table


def test_blank_images_make_the_image_check_exactly_blind(cache, first_run):
    """eval.blank_image=true: every image is the same blank one, so shuffling them changes
    nothing and the two NLLs are equal to the last digit."""
    out = cache.parent / "eval_blank"
    run_evaluate(f"hydra.run.dir={out}", "eval.blank_image=true", cache=cache)
    metrics = json.loads((out / "eval.json").read_text())["metrics"]
    assert metrics["nll_true_images"] == metrics["nll_shuffled_images"]


def test_training_on_blank_images_runs(cache, first_run):
    """data.blank_image=true (the paper's no-image ablation): alignment sees blank images only;
    the SFT base is the cached one trained on real images."""
    run_dir = cache.parent / "blank_train"
    proc, _ = train(f"hydra.run.dir={run_dir}", "trainer.max_steps=2", "data.blank_image=true", cache=cache)
    text = log_text(proc, run_dir)
    assert "split train: every image replaced by a blank one" in text
    assert REUSE_LINE in text
    assert read_results(run_dir)["config"]["data"]["blank_image"] is True


# -- 10. multi-process (trainer=ddp_sim; loss-curve parity: tests/test_ddp.py) ---------------------------


def test_ddp_sim_two_cpu_processes_train_and_rank_zero_writes(cache, first_run):
    """trainer=ddp_sim: 2 processes over gloo run the same steps (a rank whose lists are all
    dropped still joins backward with a zero loss), and only rank 0 writes results and model."""
    run_dir = cache.parent / "ddp_sim"
    proc, _ = train(
        f"hydra.run.dir={run_dir}", "trainer=ddp_sim", "trainer.max_steps=2", "data.min_margin=1.0",
        cache=cache,
    )  # fmt: skip
    text = log_text(proc, run_dir)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in text
    assert "no list kept" in text  # min_margin=1.0 drops every list: the zero-loss path ran
    results = read_results(run_dir)
    assert results["config"]["trainer"]["devices"] == 2
    assert results["list_counters"]["lists_kept"] == 0
    assert not [p for p in run_dir.iterdir() if p.name.startswith((".results", ".model"))]


def test_train_writes_per_item_scores_that_pair_for_the_bootstrap(cache, first_run):
    """eval.predictions=true: predictions_before/after.jsonl, one scored row per test item (the
    same ids), whose mean score is the run's miou; perpo.reporting.intervals reads them."""
    from perpo.reporting.intervals import build_demonstration

    run_dir = cache.parent / "run_predictions"
    train(
        f"hydra.run.dir={run_dir}", "trainer.max_steps=1", "trainer.val_check_interval=1", "eval.predictions=true",
        "eval.retention=[existence]", cache=cache,
    )  # fmt: skip
    results = read_results(run_dir)
    ids = None
    for name in ("before", "after"):
        rows = [json.loads(line) for line in (run_dir / f"predictions_{name}.jsonl").read_text().splitlines()]
        assert len(rows) == 8 and ids in (None, [r["id"] for r in rows])
        ids = [r["id"] for r in rows]
        assert sum(r["score"] for r in rows) / 8 == pytest.approx(results[name]["miou"])
        assert "predictions" not in results[name]
    # eval.retention: the existence probe on its own 8 test items, before (with the image check)
    # and after, with per-item scores whose mean is its accuracy
    probe = results["retention"]["existence"]
    assert {"accuracy", "yes_rate", "nll_true_images", "nll_shuffled_images"} <= set(probe["before"])
    for name in ("before", "after"):
        rows = [json.loads(line) for line in (run_dir / f"predictions_{name}.existence.jsonl").read_text().splitlines()]
        assert len(rows) == 8 and all(r["id"].startswith("existence-") for r in rows)
        assert sum(r["score"] for r in rows) / 8 == pytest.approx(probe[name]["accuracy"])
    summary = build_demonstration([run_dir], n_boot=200)
    assert summary["test_items_per_task"] == {"grounding": 8, "existence": 8}
    assert set(summary["intervals"]) == {"perpo-base"} and "existence/accuracy" in summary["intervals"]["perpo-base"]
    assert not (first_run[0] / "predictions_after.jsonl").exists()  # off by default
    assert "retention" not in read_results(first_run[0])
