"""The report of a base model (``sweeps/base.sh``): how its warm start ended and what it can do.

Reads the ``eval.json`` of each task evaluated under one folder and the ``warmstart.json`` the
warm start wrote beside the weights, and writes ``docs/results/base.md`` and ``base.json``:

- the warm start: steps, wall time, why it stopped (``plateau``, ``target``, ``steps``) and its
  validation curve, which shows whether it had plateaued;
- per task: the metrics on the test split, and whether the base uses the image (answer NLL with
  true vs shuffled images, :func:`perpo.evaluation.loop.uses_image`);
- grounding's best-of-N oracle beside its greedy acc@0.5: the room a preference method has.

    python -m perpo.reporting.base_report outputs/base/<stamp> --out docs/results/base.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from perpo.atomic import write_text_atomic
from perpo.evaluation.loop import uses_image
from perpo.reporting.report import collect_runs
from perpo.reporting.tables import markdown_table

#: The metrics shown per task (the first is the task's headline), when present in eval.json.
SHOWN: dict[str, tuple[str, ...]] = {
    "grounding": ("acc@0.5", "miou", "parse_rate", "best_of_n_acc@0.5", "best_of_n_reward"),
    "counting": ("accuracy", "mae", "parse_rate"),
    "ocr": ("reward_edit_distance", "edit_distance", "f1", "parse_rate"),
    "existence": ("accuracy", "yes_rate", "pope_f1", "parse_rate"),
}
_ORDER = ("grounding", "counting", "ocr", "existence")


def build_base_report(folder: str | Path, *, seconds: float | None = None, commands: list[str] | None = None) -> dict[str, Any]:
    """``base.json``'s content from the eval.json files under ``folder`` (one per task)."""
    evals = [run for run in collect_runs([folder]) if run["_kind"] == "eval"]
    if not evals:
        raise ValueError(f"no eval.json under {folder}: run sweeps/base.sh (evaluate.py per task) first")
    tasks: dict[str, Any] = {}
    checkpoints = set()
    for run in sorted(evals, key=lambda r: (_ORDER.index(r["task"]) if r["task"] in _ORDER else 99, r["task"])):
        if run["task"] in tasks:
            raise ValueError(f"{run['_file']}: a second evaluation of {run['task']} under {folder}")
        metrics = run["metrics"]
        entry = {"test_items": run["num_records"], "metrics": metrics}
        if "nll_true_images" in metrics:
            entry["uses_image"] = uses_image(metrics)
        tasks[run["task"]] = entry
        checkpoints.add(run["checkpoint"])
    warmstart = None
    for checkpoint in checkpoints:
        record = Path(checkpoint) / "warmstart.json"
        if record.exists():
            warmstart = json.loads(record.read_text())
    out: dict[str, Any] = {"checkpoints": sorted(checkpoints), "warmstart": warmstart, "tasks": tasks}
    if seconds is not None:
        out["wall_seconds"] = round(float(seconds))
    out["commands"] = list(commands or [])
    return out


def base_markdown(report: dict[str, Any]) -> str:
    """``base.md``: the warm start's end and curve, then one table of every task."""
    lines = ["# The demonstration's base", ""]
    for command in report.get("commands") or []:
        lines += ["```", command, "```", ""]
    stages = []  # the warm start's stages, earliest first (a later stage keeps its predecessor as "previous")
    ws = report.get("warmstart")
    while ws:
        stages.insert(0, ws)
        ws = ws.get("previous")
    for number, ws in enumerate(stages, 1):
        name = f"Warm start, stage {number} of {len(stages)}" if len(stages) > 1 else "Warm start"
        lr = f" at lr {ws['lr']:g}" if ws.get("lr") is not None else ""
        lines.append(
            f"{name}: {ws['steps']} steps{lr} in {ws['seconds'] / 60:.1f} min, stopped by **{ws['stopped']}**; "
            f"main task {ws['task']}, mixed with {', '.join(ws['mix']) or 'nothing'} ({ws['train_records']} train records), seed {ws['seed']}."
        )
        if ws.get("val_history"):
            lines += ["", f"Validation curve ({ws['monitor']}):", ""]
            lines.append(markdown_table(["step", *[str(s) for s, _ in ws["val_history"]]], [["value", *[f"{v:.3f}" for _, v in ws["val_history"]]]]))
        lines.append("")
    if stages and report.get("wall_seconds") is not None:
        lines.append(f"The whole script (warm start, copy, evaluations) took {report['wall_seconds'] / 60:.1f} min.")
    lines += ["", "## Every task on its test split", ""]
    rows = []
    for task, entry in report["tasks"].items():
        m = entry["metrics"]
        shown = ", ".join(f"{k} {m[k]:.3f}" for k in SHOWN.get(task, tuple(m)) if k in m)
        nll = f"{m['nll_true_images']:.3f} / {m['nll_shuffled_images']:.3f}" if "nll_true_images" in m else "-"
        uses = {True: "yes", False: "**no**"}.get(entry.get("uses_image"), "-")
        rows.append([task, str(entry["test_items"]), shown, nll, uses])
    lines.append(markdown_table(["task", "items", "metrics", "NLL true / shuffled images", "uses the image"], rows, numeric=False))
    grounding = report["tasks"].get("grounding", {}).get("metrics", {})
    if "best_of_n_acc@0.5" in grounding:
        n = int(grounding.get("best_of_n_size", 0))
        lines += [
            "",
            f"Room above the base: greedy acc@0.5 {grounding['acc@0.5']:.3f} vs best-of-{n} acc@0.5 "
            f"{grounding['best_of_n_acc@0.5']:.3f} (the best of {n} sampled answers per item, by IoU).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perpo.reporting.base_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the folder sweeps/base.sh evaluated into (one eval.json per task)")
    parser.add_argument("--out", default="docs/results/base.md", help="markdown; base.json is written beside it")
    parser.add_argument("--seconds", type=float, default=None, help="the script's wall time")
    parser.add_argument("--command", action="append", default=[], help="the command that produced it (repeatable)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    report = build_base_report(args.folder, seconds=args.seconds, commands=args.command)
    out = Path(args.out)
    write_text_atomic(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    write_text_atomic(out, base_markdown(report))
    print(base_markdown(report))


if __name__ == "__main__":
    main()
