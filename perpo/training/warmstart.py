"""The SFT warm start: the base PerPO aligns, fitted on ground truth and cached by a hash of
everything that determines it (model, task, data sizes and seed, warm-start settings)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import ConcatDataset

from perpo.config import other_task_configs
from perpo.data import make_splits
from perpo.data.box_space import with_box_space
from perpo.data.datamodule import RecordDataModule
from perpo.models.loading import ModelLoadError, atomic_save_pretrained, ensure_tiny, load_model
from perpo.prompting import ChatFamily, task_spec, task_spec_of
from perpo.training.callbacks import StepLog, StepProgressBar, ValHistory
from perpo.training.config import optim_config
from perpo.training.module import PerPOModule

log = logging.getLogger(__name__)


class StopAfter(EarlyStopping):
    """Lightning's early stopping, judged only from optimizer step ``start`` on: a model learning a
    hard task from scratch sits at chance for a while, which the plateau rule would otherwise
    take for its end."""

    def __init__(self, start: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.start = start

    def on_validation_end(self, trainer, pl_module):
        if trainer.global_step >= self.start:
            super().on_validation_end(trainer, pl_module)


def config_digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _mixed_splits(cfg: DictConfig, splits, mixed: dict[str, DictConfig], processor):
    """The main task's train split joined by each mixed task's synthetic train split
    (``warmstart.mix_size`` records, default ``data.sizes.train``, from ``data.seed``); batches
    draw from the union, so each task's share is its share of the records. Validation stays
    the main task's: it is what stops the warm start."""
    sizes = {"train": int(cfg.warmstart.get("mix_size") or cfg.data.sizes.train)}
    parts = [splits["train"]]
    for name, node in mixed.items():
        options = OmegaConf.to_container(node.get("generator") or {}, resolve=True)
        part = make_splits(name, sizes, seed=int(cfg.data.seed), **options)
        parts.append(with_box_space(part, processor, cfg.model.box_format)["train"])
    return {**splits, "train": ConcatDataset(parts)}


def _stop_reason(steps: int, cap: int, stop, reached) -> str:
    """Why the warm start ended: ``target`` (stop_at.value reached), ``plateau`` (no better val for
    ``warmstart.patience`` validations) or ``steps`` (warmstart.steps ran out first)."""
    if steps >= cap or not stop or reached is None:
        return "steps"
    if stop.get("value") is not None:
        value, hit = float(stop.value), float(reached)
        if (hit >= value) if stop.mode == "max" else (hit <= value):
            return "target"
    return "plateau"


def prepare_base(cfg: DictConfig, splits) -> Path:
    """The model PerPO starts from: the configured checkpoint, SFT-warm-started if enabled.

    The SFT base is cached under ``paths.cache_dir`` keyed by everything that determines it, so
    later runs (other losses, seeds of the aligner, sweeps) reuse it.
    """
    model_cfg = cfg.model
    path = Path(model_cfg.path)
    if model_cfg.get("build_tiny"):  # one folder per architecture, so changing arch never reuses a stale build
        arch = OmegaConf.to_container(model_cfg.arch)
        path = ensure_tiny(path.with_name(f"{path.name}-{config_digest(arch)}"), seed=0, **arch)
    elif not path.exists() and "/" not in str(model_cfg.path):
        raise ModelLoadError(
            f"model.path={model_cfg.path!r} is neither a local folder nor a hub id 'owner/name': "
            "give the folder of a checkpoint or a hub id"
        )
    ws = cfg.warmstart
    if not ws.enabled:
        return path
    mixed = other_task_configs(cfg, "warmstart.mix")
    seed = int(ws.get("seed", cfg.seed))
    key = config_digest(
        OmegaConf.to_container(model_cfg, resolve=True),
        OmegaConf.to_container(cfg.task, resolve=True),
        OmegaConf.to_container(cfg.data.sizes),
        cfg.data.seed,
        OmegaConf.to_container(ws, resolve=True),
        seed,
        *([{k: OmegaConf.to_container(v, resolve=True) for k, v in mixed.items()}] if mixed else []),
    )
    base = Path(cfg.paths.cache_dir) / "sft_base" / f"{model_cfg.name}-{cfg.task.name}-{key}"
    if (base / "config.json").exists():
        log.info("SFT warm start: reusing the cached base at %s", base)
        return base
    log.info("SFT warm start: SFT on ground truth for up to %d steps (stops at warmstart.stop_at) -> %s", ws.steps, base)
    start = time.time()
    L.seed_everything(seed, verbose=False)
    model, processor = load_model(
        path, dtype=model_cfg.dtype, attn_implementation=model_cfg.get("attn_implementation"),
        eos_token=model_cfg.get("eos_token"),
    )  # fmt: skip
    family = ChatFamily(
        processor, model_cfg.box_format, system_prompt=model_cfg.get("system_prompt"), box_frame=model_cfg.get("box_frame", "original")
    )
    splits = with_box_space(splits, processor, model_cfg.box_format)
    if mixed:
        splits = _mixed_splits(cfg, splits, mixed, processor)
    tasks = {name: task_spec_of(name, node) for name, node in mixed.items()}
    module = PerPOModule(
        model, processor, family, task_spec(cfg), None, loss="sft",
        optim=optim_config(ws), sft_tasks={cfg.task.name: task_spec(cfg), **tasks} if tasks else None,
    )
    callbacks: list = [StepLog(50), StepProgressBar()]
    stop = ws.get("stop_at")
    history = ValHistory(f"val/{stop.metric}" if stop else "")
    if stop:  # a base that "can already do the task somewhat": stop once val reaches the target
        callbacks.append(history)
        callbacks.append(
            StopAfter(  # the target reached, or (warmstart.patience) no better for that many validations
                int(ws.get("plateau_after") or 0),
                monitor=f"val/{stop.metric}", mode=stop.mode,
                stopping_threshold=None if stop.get("value") is None else float(stop.value),
                patience=int(ws.get("patience") or 10**9), check_on_train_epoch_end=False,
            )
        )  # fmt: skip
    trainer = L.Trainer(
        max_steps=int(ws.steps), accelerator=cfg.trainer.get("accelerator", "cpu"), devices=1,
        logger=False, enable_checkpointing=False, gradient_clip_val=1.0, num_sanity_val_steps=0,
        val_check_interval=int(ws.val_every) if stop else None, check_val_every_n_epoch=None if stop else 1,
        limit_val_batches=None if stop else 0, enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(module, RecordDataModule(splits["train"], splits.get("val"), batch_size=int(ws.batch_size), seed=seed))
    reached = trainer.callback_metrics.get(f"val/{stop.metric}") if stop else None
    record = {  # warmstart.json, beside the weights: how this base was made and where it stopped
        "steps": int(trainer.global_step), "seconds": round(time.time() - start, 1), "seed": seed,
        "task": cfg.task.name, "mix": list(mixed), "train_records": len(splits["train"]),
        "monitor": history.monitor or None, "val_history": history.history,
        "stopped": _stop_reason(trainer.global_step, int(ws.steps), stop, reached),
        "lr": float(ws.lr), "init": str(path),
    }  # fmt: skip
    if (path / "warmstart.json").exists():  # a further stage of an earlier warm start: keep its record
        record["previous"] = json.loads((path / "warmstart.json").read_text())
    atomic_save_pretrained(module.policy, processor, base, extra_files={"warmstart.json": json.dumps(record, indent=2) + "\n"})
    log.info(
        "SFT warm start done in %.0f s, %d steps (%s)%s", record["seconds"], trainer.global_step, record["stopped"],
        f", val {stop.metric}={float(reached):.3f}" if reached is not None else "",
    )  # fmt: skip
    return base
