"""What ``train.py`` runs, in order:

    data splits -> base model (built, SFT warm start, cached) -> evaluate (before)
    -> align (PerPO / DPO / LiPO / SFT, Lightning) -> evaluate (after) -> results.json + model
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities.exceptions import SIGTERMException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from perpo.atomic import write_json_atomic, write_text_atomic
from perpo.callbacks import ListSamples, StepLog
from perpo.config import strategy_name
from perpo.data import make_splits
from perpo.datamodule import RecordDataModule
from perpo.evaluation import best_of_n, evaluate, image_dependence
from perpo.families import ChatFamily, TaskSpec
from perpo.models.loading import atomic_save_pretrained, ensure_tiny, load_model
from perpo.models.lora import export_policy
from perpo.module import ListConfig, OptimConfig, PerPOModule
from perpo.rewards import get_reward
from perpo.sampling import SamplingConfig

log = logging.getLogger(__name__)

# Expected, and said better by perpo itself: the frozen reference is in eval mode on purpose,
# and a step whose lists were all dropped returns None (perpo logs and counts those steps).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*`training_step` returned `None`.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def task_spec(cfg: DictConfig) -> TaskSpec:
    return TaskSpec(cfg.task.name, cfg.task.instruction, int(cfg.task.max_new_tokens))


class Splits(dict):
    """split name -> records; ``reports``: per split, the rows a data adapter skipped and why."""

    reports: dict


def build_splits(cfg: DictConfig, only: list[str] | None = None) -> Splits:
    """train/val/test records for the configured task: synthetic (disjoint seeds), or read by a
    data adapter (``data.adapter``: RefCOCO, OCR pages, counting, the release's lists, your columns).

    With an adapter, ``eval.split`` may also name a split of the source itself
    (``evaluate.py data=refcoco eval.split=testB``); ``only`` reads just those splits."""
    if cfg.data.get("adapter"):
        from perpo.data.adapters import load_split

        data = OmegaConf.to_container(cfg.data, resolve=True)
        if cfg.eval.split not in data["splits"]:  # a split of the source, read as it is named
            data["splits"][cfg.eval.split] = cfg.eval.split
        splits, reports = Splits(), {}
        for name in only or data["splits"]:
            splits[name], report = load_split(data, name, task=cfg.task.name)
            reports[name] = {"total": report.total, "skipped": report.counts, "examples": report.examples}
        splits.reports = reports
        return splits
    sizes = OmegaConf.to_container(cfg.data.sizes)
    options = OmegaConf.to_container(cfg.task.generator)
    splits = Splits(make_splits(cfg.task.name, sizes, seed=int(cfg.data.seed), **options))
    splits.reports = {}
    return splits


def blank_where_asked(cfg: DictConfig, splits):
    """``data.blank_image``: alignment data (train, val) blank; ``eval.blank_image``: the eval split."""
    from perpo.data.blank import blank_images

    splits = dict(splits)
    names = {cfg.eval.split} if cfg.eval.get("blank_image") else set()
    if cfg.data.get("blank_image"):
        names |= {"train", "val"} & set(splits)
    for name in sorted(names):
        log.info("split %s: every image replaced by a blank one", name)
        splits[name] = blank_images(splits[name])
    return splits


def with_box_space(splits, processor, box_format: str):
    """For pixel box formats (Qwen2.5-VL), give every record ``box_width`` / ``box_height``: the
    size of the image as the processor resizes it, which the model's box coordinates refer to.
    Relative formats need nothing (returned unchanged)."""
    from perpo.boxes import get_box_format
    from perpo.models.families import model_image_size

    if not get_box_format(box_format).absolute:
        return splits

    def add(record):
        w, h = model_image_size(processor, record["width"], record["height"])
        return {"box_width": w, "box_height": h}

    return {name: ds.map(add, desc=f"box space {name}") for name, ds in dict(splits).items()}


def build_reward(cfg: DictConfig):
    """The configured reward as ``fn(completion, record) -> float | None``."""
    if cfg.reward.get("fn") is not None:  # a user's own function: reward.fn._target_=pkg.mod.fn
        return instantiate(cfg.reward.fn, _partial_=True)
    from functools import partial

    params = cfg.reward.get("params")
    params = {} if params is None else OmegaConf.to_container(params, resolve=True)
    return partial(get_reward(cfg.reward.name), **params)


def _digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def prepare_base(cfg: DictConfig, splits) -> Path:
    """The model PerPO starts from: the configured checkpoint, SFT-warm-started if enabled.

    The SFT base is cached under ``paths.cache_dir`` keyed by everything that determines it, so
    later runs (other losses, seeds of the aligner, sweeps) reuse it.
    """
    model_cfg = cfg.model
    path = Path(model_cfg.path)
    if model_cfg.get("build_tiny"):  # one folder per architecture, so changing arch never reuses a stale build
        arch = OmegaConf.to_container(model_cfg.arch)
        path = ensure_tiny(path.with_name(f"{path.name}-{_digest(arch)}"), seed=0, **arch)
    elif not path.exists() and "/" not in str(model_cfg.path):
        raise FileNotFoundError(f"model.path={model_cfg.path!r} is neither a local folder nor a hub id")
    ws = cfg.warmstart
    if not ws.enabled:
        return path
    key = _digest(
        OmegaConf.to_container(model_cfg, resolve=True),
        OmegaConf.to_container(cfg.task, resolve=True),
        OmegaConf.to_container(cfg.data.sizes),
        cfg.data.seed,
        OmegaConf.to_container(ws, resolve=True),
        cfg.seed,
    )
    base = Path(cfg.paths.cache_dir) / "sft_base" / f"{model_cfg.name}-{cfg.task.name}-{key}"
    if (base / "config.json").exists():
        log.info("SFT warm start: reusing the cached base at %s", base)
        return base
    log.info("SFT warm start: SFT on ground truth for up to %d steps (stops at warmstart.stop_at) -> %s", ws.steps, base)
    start = time.time()
    L.seed_everything(int(cfg.seed), verbose=False)
    model, processor = load_model(
        path, dtype=model_cfg.dtype, attn_implementation=model_cfg.get("attn_implementation"),
        eos_token=model_cfg.get("eos_token"),
    )  # fmt: skip
    family = ChatFamily(processor, model_cfg.box_format, system_prompt=model_cfg.get("system_prompt"))
    splits = with_box_space(splits, processor, model_cfg.box_format)
    module = PerPOModule(
        model, processor, family, task_spec(cfg), None, loss="sft",
        optim=OptimConfig(
            lr=ws.lr, scheduler=ws.scheduler, warmup_steps=ws.warmup_steps, betas=tuple(ws.betas),
            vision_lr=ws.get("vision_lr"), projector_lr=ws.get("projector_lr"), weight_decay=ws.get("weight_decay", 0.0),
        ),
    )  # fmt: skip
    callbacks: list = [StepLog(50)]
    stop = ws.get("stop_at")
    if stop:  # a base that "can already do the task somewhat": stop once val reaches the target
        callbacks.append(
            EarlyStopping(
                monitor=f"val/{stop.metric}", mode=stop.mode, stopping_threshold=float(stop.value),
                patience=10**9, check_on_train_epoch_end=False,
            )
        )  # fmt: skip
    trainer = L.Trainer(
        max_steps=int(ws.steps), accelerator=cfg.trainer.get("accelerator", "cpu"), devices=1,
        logger=False, enable_checkpointing=False, gradient_clip_val=1.0, num_sanity_val_steps=0,
        val_check_interval=int(ws.val_every) if stop else None, check_val_every_n_epoch=None if stop else 1,
        limit_val_batches=None if stop else 0, enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(module, RecordDataModule(splits["train"], splits.get("val"), batch_size=int(ws.batch_size), seed=int(cfg.seed)))
    atomic_save_pretrained(module.policy, processor, base)
    reached = trainer.callback_metrics.get(f"val/{stop.metric}") if stop else None
    log.info(
        "SFT warm start done in %.0f s, %d steps%s", time.time() - start, trainer.global_step,
        f", val {stop.metric}={float(reached):.3f} (target {stop.value})" if reached is not None else "",
    )  # fmt: skip
    return base


def load_base(cfg: DictConfig, path: Path, splits):
    """(model, processor, family, splits with their box space) for the checkpoint at ``path``."""
    model, processor = load_model(
        path, dtype=cfg.model.dtype, attn_implementation=cfg.model.get("attn_implementation"),
        eos_token=cfg.model.get("eos_token"),
    )  # fmt: skip
    family = ChatFamily(processor, cfg.model.box_format, system_prompt=cfg.model.get("system_prompt"))
    return model, processor, family, with_box_space(splits, processor, cfg.model.box_format)


def _stored_lists(cfg: DictConfig, base_path: Path):
    """``data.lists``: the stored lists to train on (None: sample online). Their reference
    log-probs must come from the model this run starts from."""
    path = cfg.data.get("lists")
    if not path:
        return None
    from perpo.offline import ListsError, lists_meta, load_lists

    cached = cfg.reference == "cached"
    lists = load_lists(path, need_ref=cached)
    meta = lists_meta(path) or {}
    if meta.get("base") and meta["base"] != str(base_path):
        message = (
            f"data.lists={path} was sampled from {meta['base']}, but this run starts from {base_path}"
        )
        if cached:
            raise ListsError(message + ": its cached reference log-probs belong to another model; use reference=copy")
        log.warning("%s (the lists are off-policy for it)", message)
    blank = bool(cfg.data.get("blank_image"))
    if cached and meta and bool((meta.get("data") or {}).get("blank_image")) != blank:
        raise ListsError(
            f"data.blank_image={blank}, but the reference log-probs of data.lists={path} were computed with "
            f"blank_image={not blank}: sample the lists with the same data.blank_image, or use reference=copy"
        )
    if blank:
        from perpo.data.blank import blank_images

        lists = blank_images(lists)
    log.info("training on %d stored lists of N=%d from %s", len(lists), len(lists[0]["rewards"]), path)
    return lists


def build_logger(cfg: DictConfig):
    if not cfg.get("logger") or not cfg.logger.get("_target_"):
        return False
    return instantiate(cfg.logger)


def run(cfg: DictConfig) -> dict[str, Any]:
    out_dir = Path(cfg.paths.output_dir)
    task = task_spec(cfg)
    splits = build_splits(cfg)
    reports = splits.reports
    base_path = prepare_base(cfg, splits)
    splits = blank_where_asked(cfg, splits)

    stored = _stored_lists(cfg, base_path)
    if stored is not None:  # offline PerPO: train on sample.py's lists, no sampling
        splits = {**splits, "train": stored}
    # Lists read by a data adapter (the release's JSONL) train the same way as sample.py's.
    offline = "answers" in splits["train"].column_names
    if offline and stored is None:
        from perpo.offline import check_list_sizes

        check_list_sizes(splits["train"], f"data.path={cfg.data.get('path')} (train)")

    L.seed_everything(int(cfg.seed), verbose=False)
    policy, processor, family, splits = load_base(cfg, base_path, splits)
    policy.to(_device(cfg))  # evaluation before training runs where training will
    lora = cfg.model.get("lora")
    lora_on = bool(lora and lora.get("enabled"))
    if lora_on:  # LoRA's B matrices start at zero: the policy is unchanged at init
        policy = _apply_lora(policy, lora)
    if cfg.model.get("gradient_checkpointing"):  # trade compute for activation memory
        enable_activation_checkpointing(policy)
    test = splits[cfg.eval.split]
    results: dict[str, Any] = {"task": task.name, "loss": cfg.loss.name, "seed": int(cfg.seed), "base": str(base_path)}
    if reports:
        results["data_skipped"] = reports

    from perpo.checkpointing import resume_path

    ckpt = resume_path(out_dir, bool(cfg.get("resume", False)), cfg.get("ckpt_path"))
    before_file = out_dir / "before.json"
    if cfg.eval.before and ckpt and before_file.exists():  # resumed: the base was evaluated already
        results.update(json.loads(before_file.read_text()))
        log.info("resuming from %s; before (from %s): %s", ckpt, before_file.name, _fmt(results["before"]))
    elif cfg.eval.before and _is_rank_zero():  # other ranks (DDP children) go straight to training
        results["before"] = evaluate(policy, processor, family, task, test, batch_size=cfg.eval.batch_size, desc="eval before")
        if cfg.eval.image_check:
            results["before"].update(image_dependence(policy, processor, family, task, test, seed=int(cfg.seed)))
            results["base_uses_image"] = _uses_image(results["before"])
            if not results["base_uses_image"]:
                log.warning(
                    "the base model ignores the image: answer NLL %.4f with true images vs %.4f with "
                    "shuffled ones. Preference training can then only move its guess, not ground it "
                    "(the paper's image-unconditional case); train the base longer (warmstart.steps).",
                    results["before"]["nll_true_images"], results["before"]["nll_shuffled_images"],
                )  # fmt: skip
        if cfg.eval.get("best_of_n"):  # the oracle line of the paper's list-size figure
            results["before"].update(
                best_of_n(
                    policy, processor, family, task, test, build_reward(cfg), n=int(cfg.listsize),
                    temperature=float(cfg.sampling.temperature), top_p=float(cfg.sampling.top_p), seed=int(cfg.seed),
                    threshold=0.5 if task.name == "grounding" else None,
                )
            )  # fmt: skip
        log.info("before: %s", _fmt(results["before"]))
        if _is_rank_zero():
            write_json_atomic(before_file, {k: results[k] for k in ("before", "base_uses_image") if k in results})

    module = PerPOModule(
        policy, processor, family, task, build_reward(cfg),
        loss=cfg.loss.name, beta=float(cfg.beta), gamma=cfg.margin.gamma, margin=cfg.margin.kind,
        lists=ListConfig(
            listsize=int(cfg.listsize), min_margin=float(cfg.data.min_margin),
            max_empty_steps=int(cfg.data.max_empty_steps),
            sampling=SamplingConfig(
                float(cfg.sampling.temperature), float(cfg.sampling.top_p), task.max_new_tokens, seed=int(cfg.seed)
            ),
        ),
        optim=OptimConfig(**OmegaConf.to_container(cfg.optim)),
        reference=cfg.reference, length_normalize=bool(cfg.loss.get("length_normalize", False)),
        scoring=cfg.get("scoring", "auto"), stored_lists=offline,
    )  # fmt: skip
    logger = build_logger(cfg)
    if logger:  # the composed config, as the run's hyper-parameters (W&B config, TensorBoard hparams, CSV hparams.yaml)
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer = instantiate(cfg.trainer, logger=logger, **_checkpointing(cfg, out_dir), callbacks=[
        StepLog(10), ListSamples(), *_checkpoint_callbacks(cfg, out_dir),
    ])  # fmt: skip
    datamodule = RecordDataModule(
        splits["train"], splits.get("val"), batch_size=int(cfg.data.batch_size), val_batch_size=cfg.eval.batch_size,
        seed=int(cfg.seed),
    )  # fmt: skip
    start = time.time()
    try:
        trainer.fit(module, datamodule, ckpt_path=ckpt)
    except SIGTERMException:
        from perpo.checkpointing import checkpoint_dir

        log.warning(
            "stopped by SIGTERM; continue with: python train.py <same overrides> hydra.run.dir=%s resume=true "
            "(checkpoint %s)", out_dir, checkpoint_dir(out_dir) / "last.ckpt",
        )  # fmt: skip
        raise SystemExit(143) from None
    results["train_seconds"] = round(time.time() - start, 1)
    results["list_counters"] = dict(module.counters)

    trained = _trained_policy(cfg, trainer, module, base_path, splits)  # every rank takes part
    if cfg.eval.after and trainer.is_global_zero:
        results["after"] = evaluate(trained, processor, family, task, test, batch_size=cfg.eval.batch_size, desc="eval after")
        log.info("after: %s", _fmt(results["after"]))
    results["config"] = OmegaConf.to_container(cfg, resolve=True)
    if not trainer.is_global_zero:  # multi-process: one writer, rank 0
        return results
    _log_evaluations(logger, results, trainer.global_step)
    write_json_atomic(out_dir / "results.json", results)
    if cfg.save_model:
        merge = not lora_on or lora.get("save", "merged") == "merged"
        export_policy(trained, out_dir / "model", merge=merge, processor=processor, inplace=True)
    print_table(results)
    return results


def _trained_policy(cfg: DictConfig, trainer, module, base_path: Path, splits):
    """The trained policy as one whole model on rank 0, for the after-evaluation and save_pretrained.

    Under FSDP (and ZeRO-3) each rank holds a shard of every weight: the full weights are gathered
    to rank 0 (a collective: every rank calls this) and loaded into a fresh copy of the base
    model (same family, same LoRA). Other ranks get None. Otherwise: ``module.policy`` itself.
    """
    from perpo.strategies import LightningFSDPStrategy, shards_parameters

    strategy = trainer.strategy
    if not shards_parameters(strategy):
        return module.policy
    if isinstance(strategy, LightningFSDPStrategy):
        state = strategy.lightning_module_state_dict()  # full on rank 0 (trainer.strategy.state_dict_type: full)
    else:  # DeepSpeed ZeRO-3 (checked on CPU: trainer=deepspeed_zero3_sim)
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()} if trainer.is_global_zero else {}
    if not trainer.is_global_zero:
        return None
    policy, *_ = load_base(cfg, base_path, splits)
    lora = cfg.model.get("lora")
    if lora and lora.get("enabled"):
        policy = _apply_lora(policy, lora)
    policy.load_state_dict({k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")})
    return policy.to(_device(cfg)).eval()


def _log_evaluations(logger, results: dict, step: int) -> None:
    """The before/after evaluation metrics to the logger, then close a W&B run: the next job of a
    multirun (same process) starts its own run."""
    if not logger:
        return
    metrics = {f"eval_{when}/{k}": float(v) for when in ("before", "after") for k, v in (results.get(when) or {}).items()
               if isinstance(v, (int, float))}  # fmt: skip
    if metrics:
        logger.log_metrics(metrics, step=step)
    logger.finalize("success")
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        logger.experiment.finish()


def evaluate_only(cfg: DictConfig) -> dict[str, Any]:
    """``evaluate.py``: greedy decoding on ``eval.split``, metrics -> eval.json + eval.md, answers ->
    predictions.jsonl, all in the run directory (written atomically)."""
    out_dir = Path(cfg.paths.output_dir)
    task = task_spec(cfg)
    checkpoint = cfg.eval.get("checkpoint")
    needs_base = not checkpoint and cfg.warmstart.enabled  # the SFT warm start reads train and val
    splits = build_splits(cfg, only=None if needs_base else [cfg.eval.split])
    reports = splits.reports
    path = Path(checkpoint) if checkpoint else prepare_base(cfg, splits)
    splits = blank_where_asked(cfg, splits)
    model, processor, family, splits = load_base(cfg, path, splits)
    model.to(_device(cfg))
    records = splits[cfg.eval.split]
    result = evaluate(
        model, processor, family, task, records, batch_size=cfg.eval.batch_size, desc=f"eval {cfg.eval.split}",
        return_predictions=True,
    )  # fmt: skip
    predictions = result.pop("predictions")
    if cfg.eval.image_check:
        result.update(image_dependence(model, processor, family, task, records, seed=int(cfg.seed)))
    report = {
        "task": task.name, "split": cfg.eval.split, "num_records": len(records), "checkpoint": str(path),
        "blank_image": bool(cfg.eval.get("blank_image")), "metrics": result,
        **({"data_skipped": reports.get(cfg.eval.split)} if reports else {}),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }  # fmt: skip
    write_json_atomic(out_dir / "eval.json", report)
    lines = "".join(json.dumps(p) + "\n" for p in predictions)
    write_text_atomic(out_dir / "predictions.jsonl", lines)
    table = ["| metric | value |", "|---|---|", *(f"| {k} | {v:.4f} |" for k, v in result.items())]
    header = f"{task.name}, split {cfg.eval.split} ({len(records)} records){', blank images' if report['blank_image'] else ''}: `{path}`"
    write_text_atomic(out_dir / "eval.md", header + "\n\n" + "\n".join(table) + "\n")
    log.info("eval %s: %s", cfg.eval.split, _fmt(result))
    return report


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0


_SHARDED = ("deepspeed", "fsdp")  # strategies with their own (sharded) checkpoint writers; FSDP "full": one file


def _checkpointing(cfg: DictConfig, out_dir: Path) -> dict:
    """Trainer keyword arguments for checkpoints: atomic writes unless the strategy shards them."""
    from perpo.checkpointing import AtomicCheckpointIO

    ck = cfg.get("checkpoint") or {}
    enabled = bool(ck.get("enabled", True))
    kwargs: dict = {"enable_checkpointing": enabled}
    name = strategy_name(cfg.trainer)
    strategy = cfg.trainer.get("strategy")
    one_file = "fsdp" in name and strategy.get("state_dict_type", "full") == "full"  # gathered on rank 0
    if enabled and (one_file or not any(s in name for s in _SHARDED)):
        kwargs["plugins"] = [AtomicCheckpointIO()]
    return kwargs


def _checkpoint_callbacks(cfg: DictConfig, out_dir: Path) -> list:
    from perpo.checkpointing import SaveOnSigterm, checkpoint_dir, periodic_checkpoint

    ck = cfg.get("checkpoint") or {}
    if not ck.get("enabled", True):
        return []
    every = ck.get("every_n_steps")
    return [
        periodic_checkpoint(out_dir, int(every) if every else None, bool(ck.get("keep_all", False))),
        SaveOnSigterm(checkpoint_dir(out_dir)),
    ]


def _device(cfg: DictConfig) -> str:
    import torch

    wants_gpu = cfg.trainer.get("accelerator", "cpu") in ("gpu", "cuda", "auto")
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


def _apply_lora(policy, lora: DictConfig):
    from perpo.models.lora import apply_lora

    targets = lora.get("target_modules")
    return apply_lora(
        policy, r=int(lora.r), alpha=float(lora.alpha), dropout=float(lora.get("dropout", 0.0)),
        target_modules=OmegaConf.to_container(targets) if OmegaConf.is_config(targets) else targets,
        vision_trainable=bool(lora.get("vision_trainable", False)),
        projector_trainable=bool(lora.get("projector_trainable", True)),
    )  # fmt: skip


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in backward (transformers >= 5 names it activation checkpointing)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _uses_image(metrics: dict, min_gain: float = 0.02) -> bool:
    """True when true images lower the answer NLL by at least ``min_gain`` (relative)."""
    true, shuffled = metrics["nll_true_images"], metrics["nll_shuffled_images"]
    return shuffled - true >= min_gain * shuffled


def _fmt(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    before, after = results.get("before", {}), results.get("after", {})
    table = Table(title=f"{results['task']}: {results['loss']} (seed {results['seed']})")
    table.add_column("metric")
    table.add_column("before (SFT base)", justify="right")
    table.add_column(f"after ({results['loss']})", justify="right")
    for key in dict.fromkeys([*before, *after]):
        b, a = before.get(key), after.get(key)
        table.add_row(key, "-" if b is None else f"{b:.4f}", "-" if a is None else f"{a:.4f}")
    Console().print(table)
