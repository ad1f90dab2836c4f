"""What ``train.py`` runs, in order:

    data splits -> base model (built, SFT warm start, cached) -> evaluate (before)
    -> align (PerPO / DPO / LiPO / SFT, Lightning) -> evaluate (after) -> results.json + model
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from perpo.atomic import write_json_atomic, write_text_atomic
from perpo.commands.common import (
    blank_where_asked,
    build_reward,
    build_splits,
    format_metrics,
    load_base,
)
from perpo.config import other_task_configs
from perpo.data import make_splits
from perpo.data.box_space import with_box_space
from perpo.data.datamodule import RecordDataModule
from perpo.data.stored_lists import ListsError, check_list_sizes, lists_meta, load_lists
from perpo.evaluation.loop import best_of_n, evaluate, image_dependence, uses_image
from perpo.models.loading import enable_activation_checkpointing
from perpo.models.lora import apply_lora_config, export_policy
from perpo.prompting import TaskSpec, task_spec, task_spec_of
from perpo.reporting.tables import print_table
from perpo.training.callbacks import ListSamples, StepLog, StepProgressBar
from perpo.training.checkpointing import (
    checkpoint_callbacks,
    checkpoint_dir,
    checkpoint_trainer_kwargs,
    resume_path,
)
from perpo.training.config import module_kwargs
from perpo.training.module import PerPOModule
from perpo.training.runtime import build_logger, device_for, is_rank_zero
from perpo.training.strategies import gather_full_policy
from perpo.training.warmstart import prepare_base

log = logging.getLogger(__name__)

# Expected, and said better by perpo itself: the frozen reference is in eval mode on purpose,
# and a step whose lists were all dropped returns None (perpo logs and counts those steps).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*`training_step` returned `None`.*")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def _stored_lists(cfg: DictConfig, base_path: Path):
    """``data.lists``: the stored lists to train on (None: sample online). Their reference
    log-probs must come from the model this run starts from."""
    path = cfg.data.get("lists")
    if not path:
        return None
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


def _write_predictions(path: Path, rows: list[dict]) -> None:
    """predictions.jsonl rows (:func:`perpo.evaluation.loop.prediction_row`), written atomically."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def _retention_tasks(cfg: DictConfig, processor) -> dict[str, tuple[TaskSpec, Any]]:
    """``eval.retention``: each other task's spec and synthetic test split (``data.sizes.test``
    items from ``data.seed``: the same items in every run, so that methods pair item by item)."""
    out = {}
    for name, node in other_task_configs(cfg, "eval.retention").items():
        options = OmegaConf.to_container(node.get("generator") or {}, resolve=True)
        test = make_splits(name, {"test": int(cfg.data.sizes.test)}, seed=int(cfg.data.seed), **options)
        out[name] = (task_spec_of(name, node), with_box_space(test, processor, cfg.model.box_format)["test"])
    return out


def _evaluate_retention(policy, processor, family, tasks, cfg: DictConfig, out_dir: Path, when: str, keep: bool) -> dict:
    """The ``eval.retention`` tasks' metrics (``when`` = before / after); before also the image check."""
    measured = {}
    for name, (spec, records) in tasks.items():
        metrics = evaluate(
            policy, processor, family, spec, records, batch_size=cfg.eval.batch_size, desc=f"eval {when} {name}", return_predictions=keep,
        )  # fmt: skip
        if keep:
            _write_predictions(out_dir / f"predictions_{when}.{name}.jsonl", metrics.pop("predictions"))
        if when == "before" and cfg.eval.image_check:
            metrics.update(image_dependence(policy, processor, family, spec, records, seed=int(cfg.seed)))
        measured[name] = metrics
        log.info("%s %s: %s", when, name, format_metrics(metrics))
    return measured


def run(cfg: DictConfig) -> dict[str, Any]:
    out_dir = Path(cfg.paths.output_dir)
    # before anything slow: a resume from a missing or damaged checkpoint fails in seconds
    ckpt = resume_path(out_dir, bool(cfg.get("resume", False)), cfg.get("ckpt_path"))
    reward = build_reward(cfg)  # a reward.fn that cannot be imported, too
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
        check_list_sizes(splits["train"], f"data.path={cfg.data.get('path')} (train)")

    L.seed_everything(int(cfg.seed), verbose=False)
    policy, processor, family, splits = load_base(cfg, base_path, splits)
    policy.to(device_for(cfg))  # evaluation before training runs where training will
    lora = cfg.model.get("lora")
    lora_on = bool(lora and lora.get("enabled"))
    if lora_on:  # LoRA's B matrices start at zero: the policy is unchanged at init
        policy = apply_lora_config(policy, lora)
    if cfg.model.get("gradient_checkpointing"):  # trade compute for activation memory
        enable_activation_checkpointing(policy)
    test = splits[cfg.eval.split]
    retention = _retention_tasks(cfg, processor)
    results: dict[str, Any] = {"task": task.name, "loss": cfg.loss.name, "seed": int(cfg.seed), "base": str(base_path)}
    if reports:
        results["data_skipped"] = reports

    keep = bool(cfg.eval.get("predictions"))  # predictions_{before,after}.jsonl: per-item scores
    before_file = out_dir / "before.json"
    if cfg.eval.before and ckpt and before_file.exists():  # resumed: the base was evaluated already
        results.update(json.loads(before_file.read_text()))
        log.info("resuming from %s; before (from %s): %s", ckpt, before_file.name, format_metrics(results["before"]))
    elif cfg.eval.before and is_rank_zero():  # other ranks (DDP children) go straight to training
        results["before"] = evaluate(
            policy, processor, family, task, test, batch_size=cfg.eval.batch_size, desc="eval before", return_predictions=keep,
        )  # fmt: skip
        if keep:
            _write_predictions(out_dir / "predictions_before.jsonl", results["before"].pop("predictions"))
        if cfg.eval.image_check:
            results["before"].update(image_dependence(policy, processor, family, task, test, seed=int(cfg.seed)))
            results["base_uses_image"] = uses_image(results["before"])
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
                    policy, processor, family, task, test, reward, n=int(cfg.listsize),
                    temperature=float(cfg.sampling.temperature), top_p=float(cfg.sampling.top_p), seed=int(cfg.seed),
                    threshold=0.5 if task.name == "grounding" else None,
                )
            )  # fmt: skip
        log.info("before: %s", format_metrics(results["before"]))
        if retention:
            before = _evaluate_retention(policy, processor, family, retention, cfg, out_dir, "before", keep)
            results["retention"] = {name: {"before": m} for name, m in before.items()}
        if is_rank_zero():
            write_json_atomic(before_file, {k: results[k] for k in ("before", "base_uses_image", "retention") if k in results})

    engine = None
    if cfg.sampling.get("engine", "transformers") == "vllm" and not offline:  # online lists drawn by vLLM
        import os

        from perpo.sampling.vllm_engine import build_engine

        # colocated: the engine in this process, so weight syncs hand tensors over instead of copying them
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        options = OmegaConf.to_container(cfg.sampling.get("vllm") or {}, resolve=True)
        engine = build_engine(base_path, cfg.paths.cache_dir, policy, processor, dtype=str(cfg.model.dtype), options=options)
    module = PerPOModule(
        policy, processor, family, task, reward,
        **module_kwargs(cfg, max_new_tokens=task.max_new_tokens, stored_lists=offline), engine=engine,
    )
    logger = build_logger(cfg)
    if logger:  # the composed config, as the run's hyper-parameters (W&B config, TensorBoard hparams, CSV hparams.yaml)
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer = instantiate(cfg.trainer, logger=logger, **checkpoint_trainer_kwargs(cfg, out_dir), callbacks=[
        StepLog(10), StepProgressBar(), ListSamples(), *checkpoint_callbacks(cfg, out_dir),
    ])  # fmt: skip
    datamodule = RecordDataModule(
        splits["train"], splits.get("val"), batch_size=int(cfg.data.batch_size), val_batch_size=cfg.eval.batch_size,
        seed=int(cfg.seed),
    )  # fmt: skip
    start = time.time()
    try:
        trainer.fit(module, datamodule, ckpt_path=ckpt)
    except SIGTERMException:
        log.warning(
            "stopped by SIGTERM; continue with: python train.py <same overrides> hydra.run.dir=%s resume=true "
            "(checkpoint %s)", out_dir, checkpoint_dir(out_dir) / "last.ckpt",
        )  # fmt: skip
        raise SystemExit(143) from None
    results["train_seconds"] = round(time.time() - start, 1)
    results["list_counters"] = dict(module.counters)

    trained = gather_full_policy(trainer, module, lambda: fresh_policy(cfg, base_path, splits))  # every rank takes part
    if cfg.eval.after and trainer.is_global_zero:
        results["after"] = evaluate(
            trained, processor, family, task, test, batch_size=cfg.eval.batch_size, desc="eval after", return_predictions=keep,
        )  # fmt: skip
        if keep:
            _write_predictions(out_dir / "predictions_after.jsonl", results["after"].pop("predictions"))
        log.info("after: %s", format_metrics(results["after"]))
        for name, metrics in _evaluate_retention(trained, processor, family, retention, cfg, out_dir, "after", keep).items():
            results.setdefault("retention", {}).setdefault(name, {})["after"] = metrics
    results["config"] = OmegaConf.to_container(cfg, resolve=True)
    if not trainer.is_global_zero:  # multi-process: one writer, rank 0
        return results
    _log_evaluations(logger, results, trainer.global_step)
    write_json_atomic(out_dir / "results.json", results)
    if cfg.save_model:
        merge = not lora_on or lora.get("save", "merged") == "merged"
        export_policy(trained, out_dir / "model", merge=merge, processor=processor, inplace=True)
    print_results(results)
    return results


def fresh_policy(cfg: DictConfig, base_path: Path, splits):
    """A new copy of the base with this run's LoRA, on the run's device: what gathered weights load into."""
    policy, *_ = load_base(cfg, base_path, splits)
    lora = cfg.model.get("lora")
    if lora and lora.get("enabled"):
        policy = apply_lora_config(policy, lora)
    return policy.to(device_for(cfg))


def _log_evaluations(logger, results: dict, step: int) -> None:
    """The before/after evaluation metrics to the logger, then close a W&B run: the next job of a
    multirun (same process) starts its own run."""
    if not logger:
        return
    metrics = {f"eval_{when}/{k}": float(v) for when in ("before", "after") for k, v in (results.get(when) or {}).items()
               if isinstance(v, (int, float))}  # fmt: skip
    for task, measured in (results.get("retention") or {}).items():  # eval.retention: eval_after/<task>/<metric>
        metrics.update({f"eval_{when}/{task}/{k}": float(v) for when in ("before", "after")
                        for k, v in (measured.get(when) or {}).items() if isinstance(v, (int, float))})  # fmt: skip
    if metrics:
        logger.log_metrics(metrics, step=step)
    logger.finalize("success")
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        logger.experiment.finish()


def print_results(results: dict) -> None:
    before, after = dict(results.get("before", {})), dict(results.get("after", {}))
    for task, measured in (results.get("retention") or {}).items():  # eval.retention: "<task>/<metric>" rows
        before.update({f"{task}/{k}": v for k, v in (measured.get("before") or {}).items()})
        after.update({f"{task}/{k}": v for k, v in (measured.get("after") or {}).items()})
    rows = []
    for key in dict.fromkeys([*before, *after]):
        b, a = before.get(key), after.get(key)
        rows.append([key, "-" if b is None else f"{b:.4f}", "-" if a is None else f"{a:.4f}"])
    title = f"{results['task']}: {results['loss']} (seed {results['seed']})"
    print_table(title, ["metric", "before (SFT base)", f"after ({results['loss']})"], rows)
