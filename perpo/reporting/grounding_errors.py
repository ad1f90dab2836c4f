"""Where synthetic grounding answers go wrong: the box of another object (a discrimination error,
which a preference over sampled boxes can rank away) or a loose box on the right one (a
localization error, which SFT on ground truth fixes too).

The records keep only the target's box; the other objects' boxes come from regenerating the
split (:func:`perpo.data.synthetic.split_samples`, the same seed and options as the run's config).
Each test answer (``predictions_*.jsonl``' ``box``, normalized in the original image) gets one kind:

- ``hit``: IoU with the target >= 0.5 (acc@0.5 counts it);
- ``wrong_object``: it overlaps another object more than the target (IoU with that object above
  its IoU with the target);
- ``loose``: it overlaps the target most, but IoU < 0.5;
- ``elsewhere``: it overlaps no object;
- ``no_box``: no box could be read.

    python -m perpo.reporting.grounding_errors outputs/multirun/demonstration-.../methods --out docs/results/grounding_errors.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from perpo.atomic import write_text_atomic
from perpo.boxes import box_iou
from perpo.data.synthetic import split_samples
from perpo.reporting.report import collect_runs, method_key, method_of
from perpo.reporting.tables import markdown_table

KINDS = ("hit", "wrong_object", "loose", "elsewhere", "no_box")
_IOU_EPS = 1e-9  # an IoU of 0.5 on paper counts as a hit (as perpo.evaluation.metrics)


def error_kind(box: Sequence[float] | None, objects: Sequence[Mapping], target_index: int, image_size: int) -> str:
    """One of :data:`KINDS` for a normalized xyxy ``box`` among ``objects`` (pixel boxes)."""
    if box is None:
        return "no_box"
    ious = [box_iou(box, [v / image_size for v in o["box"]]) for o in objects]
    target = ious[target_index]
    if target >= 0.5 - _IOU_EPS:
        return "hit"
    other = max((v for i, v in enumerate(ious) if i != target_index), default=0.0)
    if other > target:
        return "wrong_object"
    return "loose" if target > 0 else "elsewhere"


def count_kinds(predictions: str | Path, config: Mapping[str, Any]) -> Counter:
    """Kinds of a run's ``predictions_*.jsonl``, its test items regenerated from the run's config."""
    task, data = config["task"], config["data"]
    if task["name"] != "grounding" or data.get("adapter"):
        raise ValueError(f"{predictions}: error kinds need synthetic grounding, not task={task['name']} / an adapter")
    size = int(data["sizes"]["test"])
    samples = split_samples("grounding", {"test": size}, int(data["seed"]), **(task.get("generator") or {}))["test"]
    prefix = f"grounding-{int(data['seed'])}-test-"
    kinds: Counter = Counter()
    for n, line in enumerate(Path(predictions).read_text().splitlines(), 1):
        row = json.loads(line)
        if not str(row["id"]).startswith(prefix):
            raise ValueError(f"{predictions}:{n}: id {row['id']!r} is not a test item of data.seed={data['seed']}")
        sample = samples[int(str(row["id"])[len(prefix):])]
        kinds[error_kind(row.get("box"), sample.objects, sample.target_index, sample.image.width)] += 1
    return kinds


def kinds_by_method(roots: Iterable[str | Path]) -> dict[str, list[dict[str, float]]]:
    """method -> one dict of kind fractions per run (``base`` from each seed's before, once)."""
    out: dict[str, list[dict[str, float]]] = defaultdict(list)
    seen_base: set[int] = set()
    for run in collect_runs(roots, evals=False):
        folder, config = Path(run["_file"]).parent, run.get("config") or {}
        method = method_of(run)
        measured = [(method, folder / "predictions_after.jsonl")]
        if not method.endswith("+blank") and int(run["seed"]) not in seen_base:
            seen_base.add(int(run["seed"]))
            measured.insert(0, ("base", folder / "predictions_before.jsonl"))
        for method, path in measured:
            if path.exists():
                kinds = count_kinds(path, config)
                total = sum(kinds.values())
                out[method].append({k: kinds[k] / total for k in KINDS})
    return dict(out)


def kinds_markdown(by_method: Mapping[str, list[dict[str, float]]]) -> str:
    rows = []
    for method in sorted(by_method, key=method_key):
        runs = by_method[method]
        rows.append([method, str(len(runs)), *[f"{sum(r[k] for r in runs) / len(runs):.3f}" for k in KINDS]])
    return markdown_table(["method", "runs", *KINDS], rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perpo.reporting.grounding_errors", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="folders searched for results.json with predictions_*.jsonl")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    text = kinds_markdown(kinds_by_method(args.folders))
    if args.out:
        command = " ".join(["python -m perpo.reporting.grounding_errors", *argv])
        write_text_atomic(args.out, f"Share of test answers of each kind (mean over runs; perpo.reporting.grounding_errors)\n\nCommand: `{command}`\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
