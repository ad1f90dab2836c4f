"""The paper from config files: conf/experiment/paper/ (one file per row of the paper's tables) and
the ablation sweeps in sweeps/. Composition and validation only: no model is loaded, nothing trained.

On this CPU box validation may refuse a paper row only for what the box lacks: DeepSpeed (ZeRO-3
rows, when it is not installed) and CUDA (every row asks for a GPU).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from perpo.config import ConfigError, validate
from perpo.reporting.report import TABLES, dataset_of, eval_source, paper_rows_from_conf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PAPER = CONF / "experiment" / "paper"
SWEEPS = REPO / "sweeps"
NO_HYDRA_PATHS = ("paths.root=/nonexistent/perpo-root", "paths.output_dir=/nonexistent/perpo-out")

ROWS = sorted(p.stem for p in PAPER.glob("*.yaml") if not p.name.startswith("_"))
BASES = sorted(p.stem for p in PAPER.glob("_*.yaml"))
GROUNDING_MODELS = {"llava15": "LLaVA-v1.5-7B", "llava_next": "LLaVA-NeXT-7B", "llava_onevision": "LLaVA-OneVision"}
OCR_MODELS = {"ocr25k": "LLaVA-Next-25k-7B", "ocr50k": "LLaVA-Next-50k-7B"}
METHODS = {"base": "base", "sft": "SFT", "dpo": "DPO", "perpo": "PerPO"}
SWEEP_FILES = sorted(p.stem for p in SWEEPS.glob("*.yaml"))


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="train"):
        return compose(config_name="train", overrides=[*NO_HYDRA_PATHS, *overrides])


def compose_sweep(name: str, *overrides: str, hydra: bool = False):
    """A sweeps/<name>.yaml primary config as ``train.py --config-dir sweeps --config-name <name>`` sees it."""
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3", job_name="train"):
        return compose(
            config_name=name, overrides=[f"hydra.searchpath=[file://{CONF}]", *NO_HYDRA_PATHS, *overrides],
            return_hydra_config=hydra,
        )  # fmt: skip


def machine_only_problems(cfg) -> list[str]:
    """validate's complaints, asserting that each comes only from this machine (no DeepSpeed, no CUDA)."""
    import torch

    try:
        validate(cfg)
        return []
    except ConfigError as err:
        lines = [line.strip()[2:] for line in str(err).splitlines() if line.strip().startswith("- ")]
    strategy = str(cfg.trainer.get("strategy", "auto"))
    expected = []
    if "deepspeed" in strategy and importlib.util.find_spec("deepspeed") is None:
        expected.append(r"^trainer\.strategy=deepspeed\S* needs DeepSpeed, which is not installed")
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        expected.append(r"^trainer\.accelerator=gpu but torch \S+ sees no CUDA device here")
    assert len(lines) == len(expected), "\n".join(lines)
    for line, pattern in zip(lines, expected):
        assert re.search(pattern, line), line
    return lines


# -- the row files ---------------------------------------------------------------------------------


def test_one_file_per_row_of_the_papers_tables():
    expected = {f"{m}_grounding_{k}" for m in GROUNDING_MODELS for k in METHODS}
    expected |= {f"llava_next_{v}_{k}" for v in OCR_MODELS for k in METHODS}
    assert set(ROWS) == expected
    assert len(ROWS) == 20
    assert {"_released", "_released_grounding", "_released_ocr"} <= set(BASES)


@pytest.mark.parametrize("name", ROWS + BASES)
def test_paper_config_composes_resolves_and_validates_but_for_this_machine(name):
    cfg = compose_cfg(f"experiment=paper/{name}")
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    machine_only_problems(cfg)


@pytest.mark.parametrize("name", ROWS)
def test_row_settings_follow_the_file_name(name):
    cfg = compose_cfg(f"experiment=paper/{name}")
    stem, method = name.rsplit("_", 1)
    paper = cfg.paper
    assert paper.id == name
    assert paper.method == METHODS[method]
    if "_grounding" in name:
        model = stem.removesuffix("_grounding")
        assert (cfg.task.name, cfg.model.name, paper.table, paper.model) == ("grounding", model, "grounding", GROUNDING_MODELS[model])
    else:
        variant = stem.removeprefix("llava_next_")
        assert (cfg.task.name, cfg.model.name, paper.table, paper.model) == ("ocr", "llava_next", "ocr", OCR_MODELS[variant])
        assert variant in cfg.model.path
    if method == "base":  # evaluation only: one GPU, no sharding
        assert cfg.trainer.accelerator == "gpu" and "strategy" not in cfg.trainer
    else:
        assert cfg.loss.name == method
        assert cfg.trainer.strategy == "deepspeed_stage_3"
    # every number of the paper's table is in the block, so the report can put it beside ours
    for column in TABLES[paper.table].columns:
        assert isinstance(paper[column.key], float), (name, column.key)


@pytest.mark.parametrize(
    ("name", "listsize", "batch", "min_margin"),
    [
        ("llava15_grounding_perpo", 20, 2, 0.8),
        ("llava_next_grounding_dpo", 20, 2, 0.8),
        ("llava_onevision_grounding_sft", 20, 2, 0.8),
        ("llava_next_ocr25k_perpo", 5, 1, 0.04),
        ("llava_next_ocr50k_dpo", 5, 1, 0.04),
    ],
)
def test_released_hyperparameters(name, listsize, batch, min_margin):
    cfg = compose_cfg(f"experiment=paper/{name}")
    assert cfg.beta == pytest.approx(0.1)
    assert (cfg.margin.kind, cfg.margin.gamma) == ("power", pytest.approx(0.5))
    assert cfg.listsize == listsize
    assert cfg.data.batch_size == batch  # lists per device
    assert cfg.data.min_margin == pytest.approx(min_margin)
    assert cfg.sample.min_margin == pytest.approx(min_margin)
    lora = cfg.model.lora
    assert (lora.enabled, lora.r, lora.alpha, lora.target_modules) == (True, 128, 256, None)
    assert lora.projector_trainable and not lora.vision_trainable
    o = cfg.optim
    assert (o.lr, o.projector_lr, o.vision_lr, o.weight_decay) == (pytest.approx(5e-6), pytest.approx(5e-6), 0, 0)
    assert (o.scheduler, o.warmup_steps) == ("cosine", 0)
    t = cfg.trainer
    assert (t.gradient_clip_val, t.max_epochs, t.precision) == (1.0, 1, "bf16-mixed")
    assert cfg.model.dtype == "bfloat16" and cfg.model.gradient_checkpointing is True
    assert cfg.seed == 42 and cfg.warmstart.enabled is False and cfg.reference == "copy"


def test_paper_numbers_match_paper_md():
    spot = {
        "llava15_grounding_base": {"refcoco_val": 50.0, "refcocog_test": 49.3, "pope": 86.1},
        "llava15_grounding_perpo": {"refcoco_val": 63.8, "refcoco_testA": 70.6, "refcocoplus_testB": 46.9, "refcocog_test": 59.6},
        "llava_next_grounding_perpo": {"refcocoplus_val": 69.4, "refcocoplus_testA": 87.3},
        "llava_onevision_grounding_dpo": {"refcoco_testB": 71.1, "refcocog_val": 76.3},
        "llava_next_ocr25k_base": {"edit_distance": 0.67, "meteor": 0.28},
        "llava_next_ocr50k_perpo": {"edit_distance": 0.56, "f1": 0.56, "precision": 0.75, "recall": 0.46, "bleu": 0.24, "meteor": 0.36},
    }  # fmt: skip
    for name, values in spot.items():
        paper = OmegaConf.load(PAPER / f"{name}.yaml").paper
        for key, value in values.items():
            assert paper[key] == pytest.approx(value), (name, key)


def test_report_reads_every_row_from_conf():
    blocks = paper_rows_from_conf(PAPER)
    keys = {(b["table"], b["model"], b["method"]) for b in blocks}
    assert len(blocks) == len(keys) == 20
    rows = {t: sorted(b["row"] for b in blocks if b["table"] == t) for t in ("grounding", "ocr")}
    assert rows == {"grounding": list(range(1, 13)), "ocr": list(range(1, 9))}


def test_grounding_base_row_needs_no_release_lists():
    cfg = compose_cfg("experiment=paper/llava15_grounding_base")
    splits = OmegaConf.to_container(cfg.data.splits)
    assert all(isinstance(s, dict) and s["adapter"] == "refcoco" for s in splits.values())
    assert (cfg.data.sizes.train, cfg.data.sizes.val, cfg.data.sizes.test) == (2, 2, None)
    assert cfg.model.path == "llava-hf/llava-1.5-7b-hf"


@pytest.mark.parametrize(
    ("hub", "split", "column"),
    [("lmms-lab/RefCOCO", "testA", "refcoco_testA"), ("lmms-lab/RefCOCOplus", "val", "refcocoplus_val"),
     ("lmms-lab/RefCOCOg", "test", "refcocog_test")],
)  # fmt: skip
@pytest.mark.parametrize("name", ["llava15_grounding_base", "llava_next_grounding_perpo"])
def test_eval_script_overrides_reach_the_report_column(name, hub, split, column):
    """sweeps/paper_eval_grounding.sh's overrides compose, and the report files the result under the right column."""
    cfg = compose_cfg(
        f"experiment=paper/{name}", f"data.splits.test.path={hub}", f"data.splits.test.split={split}",
        "data.sizes.train=2", "data.sizes.val=2", "eval.checkpoint=outputs/paper/x/model",
    )  # fmt: skip
    machine_only_problems(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    path, ds_split = eval_source(config, config["eval"]["split"])
    (match,) = [c for c in TABLES["grounding"].columns if c.dataset == dataset_of(path) and c.split == ds_split]
    assert match.key == column
    assert column in cfg.paper


def test_default_test_split_is_refcoco_testA():
    config = OmegaConf.to_container(compose_cfg("experiment=paper/llava_onevision_grounding_perpo"), resolve=True)
    path, split = eval_source(config, "test")
    assert (dataset_of(path), split) == ("RefCOCO", "testA")


def test_command_line_wins_over_the_rows_choices():
    cfg = compose_cfg("experiment=paper/llava15_grounding_perpo", "loss=dpo", "data=refcoco", "trainer=gpu", "listsize=4")
    assert (cfg.loss.name, cfg.data.name, cfg.listsize) == ("dpo", "refcoco", 4)
    assert "strategy" not in cfg.trainer
    assert cfg.optim.lr == pytest.approx(5e-6)  # the row's values stay


# -- the ablation sweeps ---------------------------------------------------------------------------


def sweep_jobs(name: str, *extra: str) -> list[list[str]]:
    """The jobs Hydra's basic sweeper launches for sweeps/<name>.yaml plus command-line ``extra``."""
    params = compose_sweep(name, hydra=True).hydra.sweeper.params
    arguments = [f"{k}={v}" for k, v in params.items()] + list(extra)
    overrides = OverridesParser.create().parse_overrides(arguments)
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def test_sweep_files_exist():
    assert set(SWEEP_FILES) >= {"ablation_listsize", "ablation_gamma", "ablation_blank_image"}
    assert (SWEEPS / "compare_methods.sh").exists()


@pytest.mark.parametrize(
    ("name", "key", "values", "losses", "jobs"),
    [
        ("ablation_listsize", "listsize", [2, 4, 8, 12, 20], {"perpo", "dpo"}, 30),
        ("ablation_gamma", "margin.gamma", [0.0, 0.5, 1.0], {"perpo"}, 9),
        ("ablation_blank_image", "data.blank_image", [True, False], {"perpo", "dpo"}, 12),
    ],
)
def test_sweep_jobs_compose_and_validate_on_the_tiny_default(name, key, values, losses, jobs):
    expanded = sweep_jobs(name)
    assert len(expanded) == jobs
    seen_values, seen_losses = set(), set()
    for job in expanded:
        cfg = compose_sweep(name, *job)
        validate(cfg)  # the tiny synthetic default: runs on this CPU
        assert cfg.model.name == "tiny" and cfg.save_model is False
        assert cfg.eval.get("best_of_n", False) is (name == "ablation_listsize")  # the figure's oracle line
        seen_values.add(OmegaConf.select(cfg, key))
        seen_losses.add(cfg.loss.name)
    assert seen_values == set(values)
    assert seen_losses == losses


def test_sweep_on_a_paper_model_keeps_the_swept_values():
    jobs = sweep_jobs("ablation_listsize", "seed=42", "experiment=paper/llava15_grounding_perpo", "data=refcoco")
    assert len(jobs) == 10  # one seed
    for job in jobs:
        cfg = compose_sweep("ablation_listsize", *job)
        machine_only_problems(cfg)
        swept = dict(j.split("=", 1) for j in job)
        assert cfg.listsize == int(swept["listsize"]) and cfg.loss.name == swept["loss"]
        assert cfg.model.name == "llava15" and cfg.optim.lr == pytest.approx(5e-6) and cfg.seed == 42


def test_listsize_sweep_sft_run_once():
    """ablation.sh's extra SFT multirun: command-line loss/listsize replace the swept ones."""
    jobs = sweep_jobs("ablation_listsize", "loss=sft", "listsize=8")
    assert sorted(jobs) == sorted([["loss=sft", "listsize=8", f"seed={s}"] for s in (1, 2, 3)])


def test_sweep_cli_prints_the_sweep_without_running():
    proc = subprocess.run(
        [sys.executable, "train.py", "--config-dir", "sweeps", "--config-name", "ablation_gamma", "--cfg", "hydra"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "margin.gamma: 0.0,0.5,1.0" in proc.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in SWEEPS.glob("*.sh")))
def test_sweep_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(SWEEPS / script)], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


def test_demonstration_sweep_composes_and_validates():
    """sweeps/demonstration.sh: SFT / DPO / PerPO x 5 seeds on binding grounding from the committed
    multi-task base, each with per-item predictions and every other task measured (eval.retention);
    PerPO / DPO also on blank images."""
    jobs = sweep_jobs("demonstration")
    assert len(jobs) == 3 * 5
    seen = set()
    for job in jobs:
        cfg = compose_sweep("demonstration", *job)
        validate(cfg)
        assert cfg.eval.predictions is True and cfg.save_model is False and cfg.model.name == "tiny"
        assert cfg.model.path.endswith("assets/tiny_multitask_base") and cfg.warmstart.enabled is False
        assert list(cfg.eval.retention) == ["counting", "ocr", "existence"] and cfg.data.sizes.test >= 1000
        gen = cfg.task.generator
        assert cfg.task.name == "grounding" and gen.binding is True and gen.grid == 4 and list(gen.num_shapes) == [3, 4]
        seen.add((cfg.loss.name, cfg.seed))
    assert len(seen) == 15
    blank = sweep_jobs("demonstration", "loss=perpo,dpo", "data.blank_image=true")
    assert len(blank) == 10 and all(compose_sweep("demonstration", *job).data.blank_image is True for job in blank)
    # the base's own experiment: the same task and test items, the warm start on four tasks to a plateau
    base = compose_sweep("demonstration", "experiment=multitask_base")
    validate(base)
    assert list(base.warmstart.mix) == ["counting", "ocr", "existence"] and base.warmstart.patience > 0
    assert base.warmstart.stop_at.value is None and base.task.generator == cfg.task.generator
    assert base.data.sizes.test == cfg.data.sizes.test and base.data.seed == cfg.data.seed
