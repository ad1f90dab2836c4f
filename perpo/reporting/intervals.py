"""Paired bootstrap confidence intervals for method differences, and ``demonstration.json``.

Two methods evaluated on the same test items over the same training seeds give, per seed and
item, the scores ``a[s, i]`` and ``b[s, i]`` (``predictions.jsonl``'s ``score``: IoU, 1 - edit
distance, exactness; :meth:`perpo.evaluation.metrics.TaskMetrics.item_scores`). The difference
of their means, ``mean(a - b)``, is uncertain because the items are a sample of the task and
the seeds a sample of training runs; :func:`paired_bootstrap` resamples both, with replacement,
keeping the pairing (the same resampled items for both methods and every seed):

    for each of B resamples: seeds s*_1..s*_S drawn from the S seeds, items i*_1..i*_I drawn
    from the I items, statistic = mean over (s*, i*) of a[s*, i*] - b[s*, i*]

and reports ``(mean difference, lo, hi)``, ``lo`` / ``hi`` the 2.5th / 97.5th percentiles of the B
statistics (the percentile interval; B = 10,000 and a fixed seed by default, so the same inputs
give the same interval). An interval above 0 says A beats B beyond what the choice of test
items and seeds explains.

:func:`build_demonstration` gathers training runs (``results.json`` with
``predictions_before.jsonl`` / ``predictions_after.jsonl`` beside it: ``train.py
eval.predictions=true``) into ``docs/results/demonstration.json`` (schema in
docs/results/DEMONSTRATION_PLAN.md)::

    python -m perpo.reporting.intervals outputs/multirun/demo-... --out docs/results/demonstration.json

Only numpy: no scipy, no torch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from perpo.atomic import write_text_atomic
from perpo.reporting.report import collect_runs, config_value, method_key, method_of

__all__ = [
    "DEFAULT_PAIRS",
    "ITEM_METRICS",
    "build_demonstration",
    "item_metric",
    "paired_bootstrap",
    "read_predictions",
    "write_demonstration",
]

#: The method differences ``A-B`` a demonstration reports: the issue's perpo-sft and perpo-dpo,
#: the rest of the claimed order PerPO > DPO > SFT > base, and PerPO vs DPO both aligned on blank
#: images (``data.blank_image=true``, method ``<loss>+blank``): image-unconditional reward hacking.
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (
    ("perpo", "sft"), ("perpo", "dpo"), ("dpo", "sft"), ("sft", "base"), ("perpo", "base"), ("dpo", "base"),
    ("perpo+blank", "dpo+blank"), ("perpo", "perpo+blank"), ("dpo", "dpo+blank"),
)  # fmt: skip

#: task -> metric -> how the item's ``score`` gives the item's value; the mean over items of that
#: value is the metric of ``results.json`` (``edit_similarity``: 1 - ``reward_edit_distance``).
ITEM_METRICS: dict[str, dict[str, str]] = {
    "grounding": {"miou": "score", "acc@0.5": "score >= 0.5"},
    "ocr": {"edit_similarity": "score"},
    "counting": {"accuracy": "score"},
    "existence": {"accuracy": "score"},
}
_IOU_EPS = 1e-9  # as perpo.evaluation.metrics: an IoU of 0.5 on paper counts as a hit


def item_metric(task: str, metric: str, scores: np.ndarray) -> np.ndarray:
    """Per-item values of ``metric`` from per-item ``scores`` (:data:`ITEM_METRICS`)."""
    rule = ITEM_METRICS.get(task, {}).get(metric)
    if rule is None:
        raise ValueError(f"no per-item form of {task}/{metric}; known: {ITEM_METRICS.get(task, {})}")
    scores = np.asarray(scores, dtype=np.float64)
    return (scores >= 0.5 - _IOU_EPS).astype(np.float64) if rule == "score >= 0.5" else scores


def _as_matrix(x: Any, name: str) -> np.ndarray:
    m = np.asarray(x, dtype=np.float64)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"{name} must be [items] or [seeds, items] scores with at least one of each, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name} holds non-finite scores")
    return m


def paired_bootstrap(
    a: Sequence | np.ndarray,
    b: Sequence | np.ndarray,
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    resample_seeds: bool = True,
    chunk: int = 1000,
) -> tuple[float, float, float]:
    """``(mean of a - b, lo, hi)``: the paired bootstrap percentile interval of the mean difference.

    ``a``, ``b``: per-seed, per-item scores of two methods on the same items, shape ``[seeds,
    items]`` (or ``[items]`` for one seed), item ``i`` the same item for both methods and every
    seed. Each of ``n_boot`` resamples draws items (one draw shared by every seed and both
    methods) and, when ``resample_seeds`` and there are several, seeds with replacement
    (``numpy.random.default_rng(seed)``), and takes the mean difference over the drawn (seed,
    item) cells. Examples: identical methods -> ``(0, 0, 0)``; ``a = b + 0.125`` -> ``(0.125,
    0.125, 0.125)``; one seed, differences ``[0, 1]`` -> ``(0.5, 0.0, 1.0)`` (the resampled
    mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4).
    """
    da, db = _as_matrix(a, "a"), _as_matrix(b, "b")
    if da.shape != db.shape:
        raise ValueError(f"a and b must score the same seeds and items, got shapes {da.shape} and {db.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}")
    d = da - db
    n_seeds, n_items = d.shape
    mean = float(d.mean())
    if np.ptp(d) == 0:  # every resample gives this one value: no rounding in the interval
        value = float(d.flat[0])
        return value, value, value
    rng = np.random.default_rng(seed)
    stats = np.empty(int(n_boot), dtype=np.float64)
    uniform_items = np.full(n_items, 1.0 / n_items)
    uniform_seeds = np.full(n_seeds, 1.0 / n_seeds)
    for start in range(0, int(n_boot), int(chunk)):
        b = min(int(chunk), int(n_boot) - start)
        items = rng.multinomial(n_items, uniform_items, size=b).astype(np.float64)  # [b, I]: times each item is drawn
        if resample_seeds and n_seeds > 1:
            seeds = rng.multinomial(n_seeds, uniform_seeds, size=b).astype(np.float64)  # [b, S]
        else:
            seeds = np.ones((b, n_seeds))
        stats[start : start + b] = np.einsum("bs,si,bi->b", seeds, d, items) / (n_seeds * n_items)
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(stats, [tail, 100.0 - tail])
    return mean, float(lo), float(hi)


# -- demonstration.json --------------------------------------------------------------------------


def read_predictions(path: str | Path) -> dict[str, float]:
    """item id -> ``score`` of a predictions.jsonl (rows of :func:`perpo.evaluation.loop.prediction_row`)."""
    scores: dict[str, float] = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "score" not in row:
            raise ValueError(f"{path}:{n}: no 'score' (written before per-item scores; evaluate again)")
        scores[str(row["id"])] = float(row["score"])
    return scores


def setting_of(run: dict, by: str) -> str:
    """The value of the config key ``by`` (dotted: ``margin.gamma``) in a run's results.json,
    as its ablation label ``<last part>=<value>`` (``gamma=0.5``)."""
    value = config_value(run.get("config") or {}, by)
    if value is None:
        raise ValueError(f"{run['_file']}: no config value {by!r} (results.json 'config'); pick a key the sweep varied")
    return f"{by.rsplit('.', 1)[-1]}={value}"


def setting_label(run: dict, by: str | None) -> str:
    """What an ablation appends to a run's method and base (``@listsize=8``); nothing without ``by``."""
    return f"@{setting_of(run, by)}" if by else ""


def _runs(roots: Iterable[str | Path], by: str | None = None):
    """(task, method, seed) -> (metrics, per-item scores or None, source file): the base from the
    first non-blank run of each (task, seed), every run's ``after`` as its method. With ``by`` (an
    ablation), every method and the base are labelled by that setting (``perpo@listsize=8``,
    ``base@listsize=8``: the base's best-of-N oracle depends on N)."""
    cells: dict[tuple[str, str, int], tuple[dict, dict | None, str]] = {}
    for run in collect_runs(roots, evals=False):
        folder = Path(run["_file"]).parent
        task, seed, method = str(run["task"]), int(run["seed"]), method_of(run)
        label = setting_label(run, by)
        method += label
        measured = [  # the trained task, then each eval.retention task (measured before and after)
            (task, "base" + label, run.get("before"), folder / "predictions_before.jsonl"),
            (task, method, run.get("after"), folder / "predictions_after.jsonl"),
        ]
        for other, values in (run.get("retention") or {}).items():
            measured += [
                (other, "base" + label, values.get("before"), folder / f"predictions_before.{other}.jsonl"),
                (other, method, values.get("after"), folder / f"predictions_after.{other}.jsonl"),
            ]
        for task, name, metrics, predictions in measured:
            if not metrics or (name.startswith("base") and "+blank" in method):
                continue
            key = (task, name, seed)
            if key in cells:
                if name.startswith("base"):
                    continue  # every method of a seed starts from the same cached base
                raise ValueError(
                    f"two runs of {task} / {name} / seed {seed}: {cells[key][2]} and {run['_file']}; pass the "
                    f"method sweep's folder alone (ablations have their own tables)"
                )
            scores = read_predictions(predictions) if predictions.exists() else None
            cells[key] = (metrics, scores, run["_file"])
    return cells


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
        return float(value)
    return None


def setting_order(method: str) -> tuple:
    """Sort key of ``<method>@<key>=<value>``: the value as a number where it is one, then the method."""
    name, _, setting = method.partition("@")
    value = setting.partition("=")[2]
    number = _number(_as_float(value))
    return (number if number is not None else math.inf, value, method_key(name))


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def ablation_pairs(methods: Iterable[str]) -> list[tuple[str, str]]:
    """The differences an ablation reports, for methods labelled ``<method>@<setting>``: at each
    setting every method against that setting's base and the :data:`DEFAULT_PAIRS` among the
    methods there (``perpo@N=8 - dpo@N=8``); across settings each method against itself at the
    first setting (``perpo@gamma=1 - perpo@gamma=0``)."""
    methods = sorted(methods, key=setting_order)
    settings = list(dict.fromkeys(m.partition("@")[2] for m in methods))
    names = {m.partition("@")[0] for m in methods}
    pairs: list[tuple[str, str]] = []
    for setting in settings:
        here = {m.partition("@")[0] for m in methods if m.partition("@")[2] == setting}
        pairs += [(f"{a}@{setting}", f"{b}@{setting}") for a, b in DEFAULT_PAIRS if a in here and b in here]
        pairs += [(f"{m}@{setting}", f"base@{setting}") for m in sorted(here - {"base"}, key=method_key)
                  if ("base" in here) and (m, "base") not in DEFAULT_PAIRS]  # fmt: skip
    for name in sorted(names - {"base"}, key=method_key):
        at = [s for s in settings if f"{name}@{s}" in methods]
        pairs += [(f"{name}@{s}", f"{name}@{at[0]}") for s in at[1:]]
    return pairs


def build_demonstration(
    roots: Iterable[str | Path],
    *,
    by: str | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    commands: Sequence[str] = (),
    n_boot: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """The demonstration's summary from training runs under ``roots``.

    ``methods``: method -> ``"<task>/<metric>"`` -> the value of each seed of ``seeds`` (``None``
    where that seed has no run), from ``results.json`` (``before`` is the method ``base``).
    ``intervals``: ``"A-B"`` -> ``"<task>/<metric>"`` -> ``[lo, hi]`` of :func:`paired_bootstrap`
    over the seeds both methods have, on the per-item metrics of :data:`ITEM_METRICS`;
    ``differences`` holds the mean differences beside them. A pair whose per-item scores are
    missing is left out (and named in ``missing``). The items must be the same for every run
    of a task (synthetic data follows ``data.seed``, not ``seed``).
    """
    cells = _runs(roots, by)
    if not cells:
        raise ValueError(f"no results.json under {', '.join(map(str, roots))}")
    seeds = sorted({s for _, _, s in cells})
    tasks = sorted({t for t, _, _ in cells})
    methods_found = sorted({m for _, m, _ in cells}, key=setting_order if by else method_key)
    if pairs is None:
        pairs = ablation_pairs(methods_found) if by else DEFAULT_PAIRS

    methods: dict[str, dict[str, list[float | None]]] = {}
    for method in methods_found:
        table: dict[str, list[float | None]] = {}
        for task in tasks:
            names = list(dict.fromkeys(k for (t, m, _), (metrics, _, _) in cells.items() if t == task and m == method for k in metrics))
            for name in names:
                values = [_number((cells.get((task, method, s)) or ({}, None, ""))[0].get(name)) for s in seeds]
                if any(v is not None for v in values):
                    table[f"{task}/{name}"] = values
        methods[method] = table

    items: dict[str, list[str]] = {}
    for (task, method, s), (_, scores, path) in sorted(cells.items()):
        if scores is None:
            continue
        ids = sorted(scores)
        if task in items and items[task] != ids:
            raise ValueError(f"{path}: other test items than the other runs of {task}; a paired interval needs the same items")
        items.setdefault(task, ids)

    intervals: dict[str, dict[str, list[float]]] = defaultdict(dict)
    differences: dict[str, dict[str, float]] = defaultdict(dict)
    missing: list[str] = []
    for a, b in pairs:
        label = f"{a}-{b}"
        for task in tasks:
            both = [s for s in seeds if (task, a, s) in cells and (task, b, s) in cells]
            if not both:
                continue
            if any(cells[(task, m, s)][1] is None for m in (a, b) for s in both):
                missing.append(f"{label} {task}: no predictions_*.jsonl (train with eval.predictions=true)")
                continue
            ids = items[task]
            score_a = np.array([[cells[(task, a, s)][1][i] for i in ids] for s in both])
            score_b = np.array([[cells[(task, b, s)][1][i] for i in ids] for s in both])
            for metric in ITEM_METRICS.get(task, {}):
                mean, lo, hi = paired_bootstrap(
                    item_metric(task, metric, score_a), item_metric(task, metric, score_b),
                    n_boot=n_boot, seed=seed, confidence=confidence,
                )  # fmt: skip
                intervals[label][f"{task}/{metric}"] = [lo, hi]
                differences[label][f"{task}/{metric}"] = mean
    counts = {task: len(ids) for task, ids in items.items()}
    out: dict[str, Any] = {
        "test_items": min(counts.values()) if counts else 0,
        "seeds": seeds,
        "methods": methods,
        "intervals": dict(intervals),
        "commands": list(commands),
        **({"ablation": by} if by else {}),
        "differences": dict(differences),
        "test_items_per_task": counts,
        "bootstrap": {
            "resamples": int(n_boot), "seed": int(seed), "confidence": float(confidence),
            "resampled": "test items (shared by every seed and both methods) and seeds, with replacement; percentile interval",
        },  # fmt: skip
    }
    if missing:
        out["missing"] = missing
    return out


def write_demonstration(out: str | Path, roots: Iterable[str | Path], **kwargs: Any) -> dict[str, Any]:
    """:func:`build_demonstration`, written to ``out`` as indented JSON (atomically)."""
    summary = build_demonstration(roots, **kwargs)
    write_text_atomic(out, json.dumps(summary, indent=2) + "\n")
    return summary


#: What each claim of the paper reads in the summary: (claim, pair, metric) rows of the markdown.
CLAIM_ROWS: tuple[tuple[str, str, str], ...] = (
    ("1. discrimination: PerPO > SFT", "perpo-sft", "grounding/acc@0.5"),
    ("1. discrimination: PerPO > DPO", "perpo-dpo", "grounding/acc@0.5"),
    ("1. discrimination: DPO > SFT", "dpo-sft", "grounding/acc@0.5"),
    ("1. discrimination: SFT > base", "sft-base", "grounding/acc@0.5"),
    ("1. discrimination: PerPO > base", "perpo-base", "grounding/acc@0.5"),
    ("1. (mIoU) PerPO > SFT", "perpo-sft", "grounding/miou"),
    ("1. (mIoU) PerPO > DPO", "perpo-dpo", "grounding/miou"),
    ("2. kept: counting, PerPO vs base", "perpo-base", "counting/accuracy"),
    ("2. kept: OCR, PerPO vs base", "perpo-base", "ocr/edit_similarity"),
    ("2. kept: existence probe, PerPO vs base", "perpo-base", "existence/accuracy"),
    ("2. kept: existence probe, PerPO vs SFT", "perpo-sft", "existence/accuracy"),
    ("3. the image matters: PerPO real - blank", "perpo-perpo+blank", "grounding/acc@0.5"),
    ("3. the image matters: DPO real - blank", "dpo-dpo+blank", "grounding/acc@0.5"),
    ("3. blank images: PerPO vs DPO", "perpo+blank-dpo+blank", "grounding/acc@0.5"),
)
#: The columns of the methods table, when measured: (key in ``methods``, header).
METHOD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("grounding/acc@0.5", "grounding acc@0.5"), ("grounding/miou", "grounding mIoU"),
    ("counting/accuracy", "counting acc"), ("ocr/reward_edit_distance", "OCR edit dist."),
    ("existence/accuracy", "existence acc"), ("existence/yes_rate", "existence yes-rate"),
    ("grounding/best_of_n_acc@0.5", "best-of-N acc@0.5 (oracle)"),
)  # fmt: skip
README_START = "<!-- demonstration: generated by python -m perpo.reporting.intervals --readme; do not edit -->"
README_END = "<!-- /demonstration -->"


def _mean_sd(values: list[float | None]) -> str:
    xs = [v for v in values if v is not None]
    if not xs:
        return "-"
    mean = sum(xs) / len(xs)
    sd = (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}"


def verdict(lo: float, hi: float) -> str:
    """How an interval of A - B reads: A above / below B beyond noise, or level within it."""
    return "A > B" if lo > 0 else "A < B" if hi < 0 else "level (holds 0)"


def demonstration_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown: methods (mean ± sd over seeds), then one row per claim with the
    mean difference and its 95% paired bootstrap interval. Only measured rows are shown."""
    from perpo.reporting.tables import markdown_table

    seeds = summary["seeds"]
    per_task = ", ".join(f"{t} {n}" for t, n in summary.get("test_items_per_task", {}).items())
    lines = [f"Seeds {', '.join(map(str, seeds))}; test items per task: {per_task}.", ""]
    methods = summary["methods"]
    columns = [(k, h) for k, h in METHOD_COLUMNS if any(k in table for table in methods.values())]
    rows = [[m, *[_mean_sd(table.get(k, [])) for k, _ in columns]] for m, table in methods.items()]
    lines += [markdown_table(["method", *[h for _, h in columns]], rows), ""]
    claim_rows = []
    for claim, pair, metric in CLAIM_ROWS:
        interval = summary["intervals"].get(pair, {}).get(metric)
        if interval is None:
            continue
        lo, hi = interval
        diff = summary["differences"][pair][metric]
        claim_rows.append([claim, f"`{pair}` {metric}", f"{diff:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]", verdict(lo, hi)])
    if claim_rows:  # an ablation's summary (ablation_markdown) has its own table of differences
        lines += [markdown_table(["claim", "A - B", "mean", "95% interval", "reads"], claim_rows, label_columns=2), ""]
    if summary.get("missing"):
        lines += ["Not measured: " + "; ".join(summary["missing"]), ""]
    return "\n".join(lines)


def ablation_markdown(summary: dict[str, Any]) -> str:
    """An ablation's summary (``by``): methods per setting (mean ± sd over seeds), then every
    difference of :func:`ablation_pairs` on each per-item metric, with its 95% interval."""
    from perpo.reporting.tables import markdown_table

    lines = [demonstration_markdown({**summary, "intervals": {}, "missing": []}).rstrip(), ""]
    rows = [
        [f"`{pair}`", metric, f"{summary['differences'][pair][metric]:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]", verdict(lo, hi)]
        for pair, by_metric in summary["intervals"].items()
        for metric, (lo, hi) in by_metric.items()
    ]  # fmt: skip
    lines += [markdown_table(["A - B", "metric", "mean", "95% interval", "reads"], rows, label_columns=2), ""]
    if summary.get("missing"):
        lines += ["Not measured: " + "; ".join(summary["missing"]), ""]
    return "\n".join(lines)


def replace_generated_section(text: str, section: str) -> str:
    """``text`` with what lies between :data:`README_START` and :data:`README_END` replaced."""
    if README_START not in text or README_END not in text:
        raise ValueError(f"the README has no generated section: add the lines {README_START!r} and {README_END!r}")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}\n{section.rstrip()}\n{README_END}{tail}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perpo.reporting.intervals", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="folders searched recursively for results.json")
    parser.add_argument("--out", default="docs/results/demonstration.json", help="where to write the summary")
    parser.add_argument("--command", action="append", default=[], help="a command that produced the runs (repeatable)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples B (default 10,000)")
    parser.add_argument("--seed", type=int, default=0, help="the bootstrap's random seed")
    parser.add_argument("--markdown", default=None, help="also write the summary as markdown here")
    parser.add_argument("--readme", default=None, help="also replace the README's generated demonstration section")
    parser.add_argument("--by", default=None, help="an ablation: the config key its sweep varied (listsize, margin.gamma)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.by and args.readme:
        parser.error("--readme takes the demonstration's summary; an ablation (--by) has its own markdown (--markdown)")
    summary = write_demonstration(args.out, args.folders, by=args.by, commands=args.command, n_boot=args.resamples, seed=args.seed)
    text = ablation_markdown(summary) if args.by else demonstration_markdown(summary)
    if args.markdown:
        commands = "".join(f"```\n{c}\n```\n" for c in summary["commands"])
        title = f"Ablation over {args.by}, measured" if args.by else "The demonstration, measured"
        write_text_atomic(args.markdown, f"# {title}\n\n{commands}\n{text}")
    if args.readme:
        readme = Path(args.readme)
        write_text_atomic(readme, replace_generated_section(readme.read_text(), text))
    for label, by_metric in summary["intervals"].items():
        for metric, (lo, hi) in by_metric.items():
            print(f"{label:12s} {metric:24s} {summary['differences'][label][metric]:+.4f}  [{lo:+.4f}, {hi:+.4f}]")
    for line in summary.get("missing", []):
        print(f"missing: {line}", file=sys.stderr)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
