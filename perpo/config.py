"""Start-up validation of the composed config: one clear message that says what to change.

Runs before anything is built or loaded, so a wrong combination costs a second, not a
warm start (trl-style: invalid combinations fail early).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from perpo.boxes import BOX_FRAMES
from perpo.rewards import REWARD_TASKS

# Known here (not imported from perpo.training.module) so that validation runs before torch is imported.
LIST_LOSSES = ("perpo", "dpo", "lipo")
ALL_LOSSES = (*LIST_LOSSES, "sft")


class ConfigError(ValueError):
    """The composed configuration cannot run; the message says which key to change."""


def validate(cfg: DictConfig) -> None:
    problems = list(_problems(cfg))
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def other_task_configs(cfg: DictConfig, key: str) -> dict[str, DictConfig]:
    """The ``task`` nodes of the task names listed under ``key`` (``warmstart.mix``,
    ``eval.retention``), each read from its own ``conf/task/<name>.yaml`` (instruction, answer
    length, generator options): tasks beside the configured one."""
    names = list(OmegaConf.select(cfg, key) or [])
    found: dict[str, DictConfig] = {}
    for name in names:
        if name == cfg.task.name or name in found:
            raise ConfigError(f"{key}={names}: {name!r} is listed twice or is the main task (task={cfg.task.name})")
        path = Path(cfg.paths.root) / "conf" / "task" / f"{name}.yaml"
        if not path.exists():
            raise ConfigError(f"{key}: no task config {path} for {name!r}; name files of conf/task/")
        found[name] = OmegaConf.load(path).task
    return found


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _problems(cfg: DictConfig):
    for key in ("beta", "data.min_margin", "sampling.temperature", "sampling.top_p"):
        if not _number(OmegaConf.select(cfg, key)):
            yield f"{key}={OmegaConf.select(cfg, key)}: must be a number"
            return
    task, reward, loss = cfg.task.name, cfg.reward.name, cfg.loss.name
    reward_tasks = list(cfg.reward.get("tasks") or REWARD_TASKS.get(reward, ()))
    if reward_tasks and task not in reward_tasks:
        fits = sorted(name for name, tasks in REWARD_TASKS.items() if task in tasks)
        yield (
            f"reward={reward} scores {'/'.join(reward_tasks)} answers, not task={task}; "
            f"use one of reward={','.join(fits)} (or drop reward= to take the task's default)"
        )
    if cfg.reward.get("fn") is None and reward not in REWARD_TASKS:
        yield f"reward={reward} is not registered in perpo.rewards; set reward.fn._target_ to your function"
    if loss not in ALL_LOSSES:
        yield f"loss={loss} is not known; choose one of {', '.join(ALL_LOSSES)}"
    if loss in LIST_LOSSES:
        if not isinstance(cfg.listsize, int) or cfg.listsize < 2:
            yield (
                f"listsize={cfg.listsize}: loss={loss} ranks N >= 2 sampled answers per prompt; "
                "set listsize=2 or more (paper: 20 for grounding, 5 for OCR)"
            )
        if not cfg.beta > 0:
            yield f"beta={cfg.beta}: beta must be > 0 (paper: 0.1)"
    if cfg.margin.kind == "lambda" and loss != "perpo":
        yield f"margin=lambda sets PerPO's pair weights; loss={loss} does not use them: use loss=perpo"
    if cfg.margin.kind == "power" and (cfg.margin.gamma is None or cfg.margin.gamma < 0):
        yield f"margin.gamma={cfg.margin.gamma}: gamma must be >= 0 (0 uniform, 0.5 paper, 1 linear)"
    if not 0 <= cfg.data.min_margin <= 1:
        yield f"data.min_margin={cfg.data.min_margin}: rewards lie in [0, 1], so the margin must too"
    if not cfg.sampling.temperature > 0:
        yield f"sampling.temperature={cfg.sampling.temperature}: must be > 0 (lists need diverse samples)"
    if not 0 < cfg.sampling.top_p <= 1:
        yield f"sampling.top_p={cfg.sampling.top_p}: must lie in (0, 1]"
    max_steps, max_epochs = cfg.trainer.get("max_steps", -1), cfg.trainer.get("max_epochs")
    if (max_steps is None or max_steps <= 0) and not (isinstance(max_epochs, int) and max_epochs > 0):
        yield (
            f"trainer.max_steps={max_steps}, trainer.max_epochs={max_epochs}: set a positive trainer.max_steps, "
            "or trainer.max_steps=-1 with trainer.max_epochs (e.g. 1, the paper's single epoch)"
        )
    if cfg.warmstart.enabled and cfg.warmstart.steps <= 0:
        yield f"warmstart.steps={cfg.warmstart.steps}: must be > 0, or warmstart.enabled=false"
    if cfg.get("scoring", "auto") not in ("auto", "shared", "naive"):
        yield f"scoring={cfg.get('scoring')} is not known; choose auto, shared or naive"
    frame = cfg.model.get("box_frame", "original")
    if frame not in BOX_FRAMES:
        yield f"model.box_frame={frame} is not known; choose one of {', '.join(BOX_FRAMES)} (perpo/boxes.py says which picture each means)"
    family = cfg.model.get("family")
    if family:
        from perpo.models.families import check_family  # no torch import

        try:
            check_family(family)
        except ValueError as err:
            yield str(err)
    lora = cfg.model.get("lora")
    lora_on = bool(lora and lora.get("enabled"))
    if cfg.get("reference") == "adapter_off" and not lora_on:
        yield (
            "reference=adapter_off scores pi_ref with the LoRA adapter disabled: set "
            "model.lora.enabled=true, or use reference=copy"
        )
    if cfg.get("reference") not in ("copy", "adapter_off", "cached"):
        yield f"reference={cfg.get('reference')} is not known; choose copy, adapter_off or cached"
    if cfg.get("reference") == "cached" and not cfg.data.get("lists"):
        yield (
            "reference=cached reads reference log-probs stored with offline lists: set data.lists=<sample.py folder> "
            "(sampled with sample.ref_logps=true), or use reference=copy"
        )
    yield from _sample_problems(cfg)
    if lora_on and lora.get("save", "merged") not in ("merged", "adapter"):
        yield f"model.lora.save={lora.get('save')}: choose merged or adapter"
    yield from _trainer_problems(cfg.trainer)
    # with a data adapter eval.split may name a split of the source itself (checked when read)
    named = cfg.data.sizes
    if not cfg.data.get("adapter") and cfg.eval.split not in named:
        yield f"eval.split={cfg.eval.split} is not a split of the data; choose one of {list(named)}"


def _engine_problems(key: str, engine: str):
    """``sample.engine`` / ``sampling.engine``: a known engine, and vLLM installed when chosen."""
    import importlib.util

    if engine not in ("transformers", "vllm"):
        yield f"{key}={engine} is not known; choose transformers or vllm"
    elif engine == "vllm" and importlib.util.find_spec("vllm") is None:
        yield f"{key}=vllm needs vLLM, which is not installed: pip install 'perpo[vllm]' (GPU machines), or use {key}=transformers"


def _online_engine_problems(cfg):
    engine = (cfg.get("sampling") or {}).get("engine", "transformers")
    yield from _engine_problems("sampling.engine", engine)
    if engine == "vllm":
        devices = cfg.trainer.get("devices", 1)
        if strategy_name(cfg.trainer) not in ("auto", "singledevicestrategy") or (isinstance(devices, int) and devices > 1):
            yield ("sampling.engine=vllm (online) runs in one process, colocated with the policy: use one device, or "
                   "sample the lists with vLLM first (sample.py sample.engine=vllm) and train on them with any strategy")  # fmt: skip
        if cfg.loss.name == "sft":
            yield "sampling.engine=vllm with loss=sft: SFT samples nothing; use sampling.engine=transformers"


def _sample_problems(cfg):
    yield from _online_engine_problems(cfg)
    sample = cfg.get("sample")
    if sample is None:
        return
    yield from _engine_problems("sample.engine", sample.get("engine", "transformers"))
    for key in ("chunk_size", "batch_size"):
        value = sample.get(key)
        if not isinstance(value, int) or value < 1:
            yield f"sample.{key}={value}: must be a positive integer"
    rank, world = sample.get("rank"), sample.get("world_size")
    try:
        rank, world = int(rank), int(world)
    except (TypeError, ValueError):
        yield f"sample.rank={rank}, sample.world_size={world}: must be integers"
        return
    if not 0 <= rank < world:
        yield f"sample.rank={rank} must lie in [0, sample.world_size={world})"
    margin = sample.get("min_margin", 0)
    if margin != cfg.data.min_margin and not (_number(margin) and 0 <= margin <= 1):  # else said for data.min_margin
        yield f"sample.min_margin={sample.get('min_margin')}: rewards lie in [0, 1], so the margin must too"


def strategy_name(trainer) -> str:
    """The trainer config's strategy in lower case: ``ddp``, ``fsdpstrategy``, ``auto``, ..."""
    strategy = trainer.get("strategy", "auto")
    name = strategy.get("_target_", "") if hasattr(strategy, "get") else str(strategy)
    return name.rsplit(".", 1)[-1].lower()


def _trainer_problems(trainer):
    """Strategies: missing optional packages and what this version cannot run yet, said at start-up."""
    import importlib.util

    name = strategy_name(trainer)
    if "deepspeed" in name and importlib.util.find_spec("deepspeed") is None:
        yield f"trainer.strategy={name} needs DeepSpeed, which is not installed: pip install 'perpo[deepspeed]'"
    if trainer.get("accelerator") in ("gpu", "cuda"):
        import torch  # only here: the CPU path validates without importing torch

        if not torch.cuda.is_available():
            yield (
                f"trainer.accelerator={trainer.get('accelerator')} but torch {torch.__version__} sees no CUDA "
                "device here; use trainer=cpu (or install a CUDA build of torch on a GPU machine)"
            )
