"""The Hydra config tree: every group choice composes, resolves and validates; task files pick
their default reward; wrong combinations fail at start-up with one message naming the key to
change, both in-process (``perpo.config.validate``) and through the ``train.py`` CLI.

Composition uses Hydra's compose API. ``train.yaml`` roots its paths in ``${hydra:runtime...}``,
which only a real Hydra run fills in, so compose calls override ``paths.root`` and
``paths.output_dir`` (``test_default_paths_resolve_with_hydra_runtime`` checks the real
interpolations separately).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import OmegaConf, open_dict

from perpo.config import ConfigError, validate
from perpo.config import ALL_LOSSES
from perpo.rewards.registry import REWARD_TASKS, rewards_for_task

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
# Stand-ins for ${hydra:runtime.cwd} / ${hydra:runtime.output_dir}: nothing is written there.
NO_HYDRA_PATHS = ("paths.root=/nonexistent/perpo-root", "paths.output_dir=/nonexistent/perpo-out")

GROUPS = {
    d.name: sorted(p.stem for p in d.glob("*.yaml"))
    for d in sorted(CONF.iterdir())
    if d.is_dir() and any(d.glob("*.yaml"))
}
CHOICES = [(group, choice) for group, choices in GROUPS.items() for choice in choices]


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="train"):
        return compose(config_name="train", overrides=[*NO_HYDRA_PATHS, *overrides])


def problems_of(*overrides: str) -> str:
    """The ConfigError message for ``overrides`` (fails the test if the config validates)."""
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    return str(info.value)


def bullet_lines(message: str) -> list[str]:
    return [line for line in message.splitlines() if line.lstrip().startswith("- ")]


def reward_tasks_of(reward: str) -> list[str]:
    return list(OmegaConf.load(CONF / "reward" / f"{reward}.yaml").tasks)


def overrides_for(group: str, choice: str) -> list[str]:
    """``group=choice`` plus whatever it needs to form a valid run (a reward needs its task)."""
    if group == "reward":
        return [f"task={reward_tasks_of(choice)[0]}", f"reward={choice}"]
    return [f"{group}={choice}"]


# -- 1. every choice of every group composes, resolves and validates ---------------------------


def test_expected_groups_are_enumerated():
    for group in ("task", "reward", "margin", "loss", "model", "data", "trainer", "logger"):
        assert GROUPS.get(group), f"conf/{group}/ has no yaml files"
    assert len(CHOICES) >= 20


def test_experiment_smoke_overrides_apply():
    if "smoke" not in GROUPS.get("experiment", []):
        pytest.skip("no conf/experiment/smoke.yaml")
    cfg = compose_cfg("experiment=smoke")
    smoke = OmegaConf.load(CONF / "experiment" / "smoke.yaml")
    assert cfg.trainer.max_steps == smoke.trainer.max_steps
    assert cfg.listsize == smoke.listsize
    validate(cfg)


def _refused_here() -> set[tuple[str, str]]:
    """Trainer choices this CPU box refuses at start-up (no CUDA; DeepSpeed not installed)."""
    import importlib.util

    import torch

    refused = set()
    if not torch.cuda.is_available():
        refused |= {("trainer", c) for c in ("ddp", "gpu", "fsdp", "deepspeed_zero2", "deepspeed_zero3")}
    if importlib.util.find_spec("deepspeed") is None:
        refused |= {("trainer", c) for c in ("deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero2_sim", "deepspeed_zero3_sim")}
    return refused


@pytest.mark.parametrize(("group", "choice"), CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
def test_every_group_choice_composes_resolves_and_validates(group, choice):
    cfg = compose_cfg(*overrides_for(group, choice))
    if (group, choice) in _refused_here():
        with pytest.raises(ConfigError, match=r"trainer\."):  # says so at start-up, naming the key
            validate(cfg)
    else:
        validate(cfg)  # raises ConfigError if the combination were rejected
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    if "@package _global_" in (CONF / group / f"{choice}.yaml").read_text():
        return  # task/experiment files write top-level keys; composing + resolving is the check
    assert resolved[group] is None or isinstance(resolved[group], dict)
    if group in ("task", "reward", "margin", "loss", "model", "data"):
        assert resolved[group]["name"] == choice, f"conf/{group}/{choice}.yaml: name must equal the file name"
    target = (resolved.get(group) or {}).get("_target_")
    if target:
        assert get_class(target) is not None  # the instantiation target imports


@pytest.mark.parametrize("reward", GROUPS["reward"])
def test_reward_composes_with_every_task_it_declares(reward):
    tasks = reward_tasks_of(reward)
    assert tasks, f"conf/reward/{reward}.yaml declares no tasks"
    # The yaml's `tasks` must agree with the registry (validate falls back on REWARD_TASKS).
    assert tuple(tasks) == REWARD_TASKS[reward]
    for task in tasks:
        cfg = compose_cfg(f"task={task}", f"reward={reward}")
        validate(cfg)
        OmegaConf.to_container(cfg, resolve=True)


def test_default_config_composes_resolves_and_validates():
    cfg = compose_cfg()
    validate(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert resolved["paths"]["cache_dir"] == "/nonexistent/perpo-root/outputs/cache"
    assert resolved["model"]["path"] == "/nonexistent/perpo-root/outputs/cache/tiny-llava-v1"
    assert resolved["trainer"]["default_root_dir"] == "/nonexistent/perpo-out"
    assert resolved["logger"]["save_dir"] == "/nonexistent/perpo-out"
    assert resolved["reward"]["params"]["box_format"] == resolved["model"]["box_format"]
    assert resolved["loss"]["name"] in ALL_LOSSES


def test_default_paths_resolve_with_hydra_runtime(tmp_path):
    """The real ${hydra:runtime.*} interpolations resolve once Hydra's runtime is set."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="train"):
        cfg = compose(config_name="train", return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    try:
        assert cfg.paths.root == os.getcwd() == cfg.hydra.runtime.cwd
        assert cfg.paths.output_dir == str(tmp_path)
        assert cfg.paths.cache_dir == f"{os.getcwd()}/outputs/cache"
        with open_dict(cfg):
            del cfg["hydra"]
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    finally:
        HydraConfig.instance().cfg = None


def test_wandb_logger_name_resolves():
    cfg = compose_cfg("logger=wandb", "task=ocr", "loss=dpo", "seed=3")
    assert cfg.logger.name == "ocr-dpo-seed3"


# -- 2. task files select their default reward -------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "task", "reward", "min_margin"),
    [
        ((), "grounding", "iou", 0.1),
        (("task=grounding",), "grounding", "iou", 0.1),
        (("task=ocr",), "ocr", "edit", 0.04),
        (("task=counting",), "counting", "count", 0.1),
    ],
)
def test_task_selects_its_default_reward(overrides, task, reward, min_margin):
    cfg = compose_cfg(*overrides)
    assert cfg.task.name == task
    assert cfg.reward.name == reward
    assert reward in rewards_for_task(task)
    assert cfg.data.min_margin == pytest.approx(min_margin)  # data.min_margin follows the task
    validate(cfg)


def test_explicit_reward_wins_over_the_task_default_in_either_order():
    assert compose_cfg("task=counting", "reward=count_exact").reward.name == "count_exact"
    assert compose_cfg("reward=count_exact", "task=counting").reward.name == "count_exact"
    assert compose_cfg("task=grounding", "reward=giou").reward.name == "giou"


# -- 3. wrong combinations: ConfigError naming the key to change -------------------------------


@pytest.mark.parametrize(
    ("overrides", "must_mention"),
    [
        (("task=ocr", "reward=iou"), ("reward=iou", "task=ocr", "reward=edit")),
        (("task=counting", "reward=edit"), ("reward=edit", "reward=count,count_exact")),
        (("task=grounding", "reward=count"), ("reward=giou,iou",)),
        (("listsize=1",), ("listsize",)),
        (("listsize=0", "loss=dpo"), ("listsize", "loss=dpo")),
        (("beta=0",), ("beta",)),
        (("beta=-0.1", "loss=lipo"), ("beta",)),
        (("margin=lambda", "loss=dpo"), ("margin=lambda", "loss=dpo", "loss=perpo")),
        (("margin=lambda", "loss=sft"), ("margin=lambda", "loss=sft")),
        (("margin.gamma=-1",), ("margin.gamma",)),
        (("sampling.temperature=0",), ("sampling.temperature",)),
        (("sampling.top_p=0",), ("sampling.top_p",)),
        (("sampling.top_p=1.5",), ("sampling.top_p",)),
        (("data.min_margin=2",), ("data.min_margin",)),
        (("data.min_margin=-0.1",), ("data.min_margin",)),
        (("trainer.max_steps=-1",), ("trainer.max_steps",)),
        (("trainer.max_steps=0",), ("trainer.max_steps",)),
        (("trainer.max_steps=null",), ("trainer.max_steps",)),
        (("scoring=packed",), ("scoring=packed", "auto, shared or naive")),
        (("reference=adapter_off",), ("reference=adapter_off", "model.lora.enabled=true")),
        (("model=llava15", "model.lora.save=both"), ("model.lora.save=both",)),
        (("warmstart.steps=0",), ("warmstart.steps", "warmstart.enabled=false")),
        (("eval.split=dev",), ("eval.split",)),
        (("loss.name=orpo",), ("loss=orpo",)),
        (("reference=cached",), ("reference=cached", "data.lists=")),
        (("reference=frozen",), ("reference=frozen", "copy, adapter_off or cached")),
        (("sample.engine=sglang",), ("sample.engine=sglang", "transformers or vllm")),
        (("sampling.engine=sglang",), ("sampling.engine=sglang", "transformers or vllm")),
        (("sample.chunk_size=0",), ("sample.chunk_size",)),
        (("sample.rank=2", "sample.world_size=2"), ("sample.rank=2",)),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) and "=" in v[0] else None,
)
def test_wrong_combination_names_the_key(overrides, must_mention):
    message = problems_of(*overrides)
    assert message.startswith("invalid configuration:")
    assert len(bullet_lines(message)) == 1, message
    for text in must_mention:
        assert text in message


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_several_problems_give_one_message_listing_all():
    message = problems_of(
        "task=ocr", "reward=iou", "listsize=1", "beta=0", "sampling.temperature=0",
        "data.min_margin=2", "trainer.max_steps=-1",
    )  # fmt: skip
    lines = bullet_lines(message)
    assert len(lines) == 6, message
    for key in ("reward=edit", "listsize", "beta", "sampling.temperature", "data.min_margin", "trainer.max_steps"):
        assert sum(key in line for line in lines) >= 1, f"{key!r} missing from:\n{message}"


@pytest.mark.parametrize(
    "overrides",
    [
        ("loss=sft", "listsize=1", "beta=0"),  # sft samples no lists: listsize/beta do not matter
        ("warmstart.enabled=false", "warmstart.steps=0"),
        ("margin=lambda", "loss=perpo"),
        ("data.min_margin=0",),
        ("data.min_margin=1",),
        ("listsize=2",),
        ("margin.gamma=0",),
    ],
)
def test_edge_values_that_are_valid(overrides):
    validate(compose_cfg(*overrides))


@pytest.mark.parametrize(
    "override", ["beta=null", "sampling.temperature=null", "sampling.top_p=null", "data.min_margin=null"]
)
def test_null_numbers_raise_config_error(override):
    message = problems_of(override)
    assert override.split("=")[0] in message


# -- 5. margin group values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("margin", "kind", "gamma"),
    [("paper", "power", 0.5), ("linear", "power", 1.0), ("uniform", "power", 0.0), ("lambda", "lambda", None)],
)
def test_margin_group_values(margin, kind, gamma):
    cfg = compose_cfg(f"margin={margin}")
    assert cfg.margin.name == margin
    assert cfg.margin.kind == kind
    assert cfg.margin.gamma == gamma
    validate(cfg)


def test_default_margin_is_the_paper_setting():
    cfg = compose_cfg()
    assert (cfg.margin.name, cfg.margin.kind, cfg.margin.gamma) == ("paper", "power", 0.5)


# -- 4. the CLI ----------------------------------------------------------------------------------


def run_cli(*overrides: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "train.py", *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_wrong_combination_exits_2_with_the_message(tmp_path):
    proc = run_cli("task=ocr", "reward=iou", tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "perpo: invalid configuration:"
    problems = bullet_lines(proc.stderr)
    assert len(problems) == 1
    assert "reward=edit" in problems[0]
    assert not (tmp_path / "run" / "results.json").exists()


def test_cli_prints_one_line_per_problem(tmp_path):
    proc = run_cli("task=ocr", "reward=iou", "listsize=1", "sampling.temperature=0", tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    problems = bullet_lines(proc.stderr)
    assert len(problems) == 3, proc.stderr
    assert any("reward=edit" in p for p in problems)
    assert any("listsize" in p for p in problems)
    assert any("sampling.temperature" in p for p in problems)


def test_cli_unknown_group_choice_lists_the_options(tmp_path):
    proc = run_cli("reward=nope", tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert "reward/nope" in proc.stderr
    assert "Available options in 'reward'" in proc.stderr
    for option in GROUPS["reward"]:
        assert option in proc.stderr


def test_validation_does_not_import_the_heavy_stack():
    code = (
        "import sys, perpo.config; "
        "print(','.join(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_cli_unloadable_checkpoint_exits_2_naming_model_path(tmp_path):
    """A real family whose checkpoint is neither on disk nor reachable: one message, no traceback."""
    missing = tmp_path / "no-such-checkpoint"
    env_path = str(missing)
    proc = run_cli(
        "model=llava15", f"model.path={env_path}", "warmstart.enabled=false", "trainer.max_steps=1",
        "data.sizes.train=4", "data.sizes.val=2", "data.sizes.test=2", tmp_path=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"model.path='{env_path}' could not be loaded" in proc.stderr
    assert "set model.path=<dir>" in proc.stderr


def test_vllm_engine_without_vllm_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    message = problems_of("sample.engine=vllm")
    assert "sample.engine=vllm needs vLLM" in message and "sample.engine=transformers" in message


def test_online_vllm_is_refused_where_it_cannot_run(monkeypatch):
    """sampling.engine=vllm (online, colocated): vLLM installed (here pretended), one process,
    a loss that samples. Each wrong combination names the key and what to do instead."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert "sampling.engine=vllm needs vLLM" in problems_of("sampling.engine=vllm")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    message = problems_of("sampling.engine=vllm", "trainer=ddp_sim")
    assert len(bullet_lines(message)) == 1 and "runs in one process" in message and "sample.py sample.engine=vllm" in message
    assert "SFT samples nothing" in problems_of("sampling.engine=vllm", "loss=sft")


def test_deepspeed_without_deepspeed_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    message = problems_of("trainer=deepspeed_zero3_sim")
    assert "needs DeepSpeed, which is not installed" in message and "perpo[deepspeed]" in message
