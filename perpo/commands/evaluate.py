"""What ``evaluate.py`` runs: greedy answers on one split of the configured data, scored by the
task's metrics, written to the run directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from perpo.atomic import write_json_atomic, write_text_atomic
from perpo.commands.common import blank_where_asked, build_reward, build_splits, format_metrics, load_base
from perpo.evaluation.loop import best_of_n, evaluate, image_dependence
from perpo.prompting import task_spec
from perpo.reporting.tables import markdown_table
from perpo.training.runtime import device_for
from perpo.training.warmstart import prepare_base

log = logging.getLogger(__name__)


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
    model, processor, family, splits = load_base(cfg, path, splits, key="eval.checkpoint" if checkpoint else "model.path")
    model.to(device_for(cfg))
    records = splits[cfg.eval.split]
    result = evaluate(
        model, processor, family, task, records, batch_size=cfg.eval.batch_size, desc=f"eval {cfg.eval.split}",
        return_predictions=True,
    )  # fmt: skip
    predictions = result.pop("predictions")
    if cfg.eval.image_check:
        result.update(image_dependence(model, processor, family, task, records, seed=int(cfg.seed)))
    if cfg.eval.get("best_of_n"):  # the oracle: the best of N sampled answers (N = listsize) per item
        result.update(
            best_of_n(
                model, processor, family, task, records, build_reward(cfg), n=int(cfg.listsize),
                temperature=float(cfg.sampling.temperature), top_p=float(cfg.sampling.top_p), seed=int(cfg.seed),
                threshold=0.5 if task.name == "grounding" else None,
            )
        )  # fmt: skip
    report = {
        "task": task.name, "split": cfg.eval.split, "num_records": len(records), "checkpoint": str(path),
        "blank_image": bool(cfg.eval.get("blank_image")), "metrics": result,
        **({"data_skipped": reports.get(cfg.eval.split)} if reports else {}),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }  # fmt: skip
    write_json_atomic(out_dir / "eval.json", report)
    lines = "".join(json.dumps(p) + "\n" for p in predictions)
    write_text_atomic(out_dir / "predictions.jsonl", lines)
    table = markdown_table(["metric", "value"], ([k, f"{v:.4f}"] for k, v in result.items()), numeric=False)
    header = f"{task.name}, split {cfg.eval.split} ({len(records)} records){', blank images' if report['blank_image'] else ''}: `{path}`"
    write_text_atomic(out_dir / "eval.md", header + "\n\n" + table + "\n")
    log.info("eval %s: %s", cfg.eval.split, format_metrics(result))
    return report
