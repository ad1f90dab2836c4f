"""Summarize runs: results.json files (train.py) and eval.json files (evaluate.py).

    python -m perpo.reporting outputs/multirun/2026-11-28/00-10-00             # mean ± std per (task, method)
    python -m perpo.reporting outputs/multirun/ablation-gamma-... --by margin.gamma   # one row per gamma
    python -m perpo.reporting outputs/paper --paper --out paper.md              # the paper's tables, ours beside
    python -m perpo.reporting outputs/multirun/ablation-listsize-... --figure listsize.png

Folders are searched recursively. ``--paper`` lays the runs out as the paper's tables
(../shared/PAPER.md section 4; docs/PAPER_REPRODUCTION.md): the row comes from the run's
``paper:`` block (conf/experiment/paper/*.yaml, kept in the resolved config), the column from
its evaluation split (RefCOCO / RefCOCO+ / RefCOCOg val, testA, ...; OCR: one column per
metric), and the paper's numbers from the same block. Rows of conf/experiment/paper/ without
runs show "-". ``--figure`` plots the list-size ablation (metric vs N per method; the
best-of-N oracle where results carry ``best_of_n_<metric>``). ``--out`` writes the markdown atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from perpo.atomic import atomic_write, write_text_atomic
from perpo.reporting.tables import markdown_table, print_table

PAPER_CONF = Path(__file__).resolve().parents[1] / "conf" / "experiment" / "paper"


def collect(root: str | Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(root).rglob("results.json"))]


#: The order the methods of runs (:func:`method_of`) are listed in; others after them, by name.
RUN_METHODS_IN_ORDER = ("base", "sft", "dpo", "perpo")


def method_of(run: dict) -> str:
    """A training run's method: its ``loss``, with ``+blank`` when it aligned on blank images."""
    blank = bool(((run.get("config") or {}).get("data") or {}).get("blank_image"))
    return str(run["loss"]) + ("+blank" if blank else "")


def method_key(method: str) -> tuple[int, str]:
    """Sort key of :data:`RUN_METHODS_IN_ORDER`, then the name."""
    order = RUN_METHODS_IN_ORDER
    return (order.index(method) if method in order else len(order), method)


def collect_runs(roots: Iterable[str | Path], *, evals: bool = True) -> list[dict]:
    """results.json (and eval.json) under every root, each with ``_file`` (its path) and ``_kind``
    (``train`` or ``eval``); a file found under two roots counts once."""
    seen, runs = set(), []
    names = ("results.json", "eval.json") if evals else ("results.json",)
    for root in roots:
        for name in names:
            for path in sorted(Path(root).rglob(name)):
                key = path.resolve()
                if key in seen:
                    continue
                seen.add(key)
                run = json.loads(path.read_text())
                run["_file"], run["_kind"] = str(path), "train" if name == "results.json" else "eval"
                runs.append(run)
    return runs


def config_value(mapping, dotted: str):
    """``mapping[a][b]...`` for the dotted key ``a.b...`` (a run's config), or None where a part is missing."""
    node = mapping
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def summarize(
    results: list[dict], by: Sequence[str] = ()
) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    """(task, method) -> metric -> (mean, std, n); the SFT base appears as method 'base'.

    ``by``: config keys (e.g. ``margin.gamma``) whose values split a method into one row each,
    e.g. ``perpo [margin.gamma=0.5]``; the base is shared and stays one row."""
    groups: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    seen_base = set()
    for r in results:
        config = r.get("config") or {}
        label = r["loss"] + "".join(f" [{k}={config_value(config, k)}]" for k in by)
        for method, metrics in (("base", r.get("before")), (label, r.get("after"))):
            if not metrics:
                continue
            if method == "base":  # one base per (task, seed), whatever loss ran after it
                if (r["task"], r["seed"]) in seen_base:
                    continue
                seen_base.add((r["task"], r["seed"]))
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    groups[(r["task"], method)][k].append(float(v))
    return {
        key: {k: (statistics.mean(v), statistics.pstdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in m.items()}
        for key, m in groups.items()
    }


def summary_markdown(summary: dict) -> str:
    parts = []
    for task in sorted({t for t, _ in summary}):
        methods = sorted((m for (t, m) in summary if t == task), key=lambda m: (m != "base", m))
        metrics = list(dict.fromkeys(k for m in methods for k in summary[(task, m)]))
        rows = [[m, *(_mean_std(summary[(task, m)], k) for k in metrics)] for m in methods]
        parts.append(f"## {task}: mean ± std over seeds (n)\n\n" + markdown_table(["method", *metrics], rows))
    return "\n\n".join(parts) + "\n" if parts else "no results.json found\n"


# -- the paper's tables --------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str  # the key of the paper: block
    header: str
    metric: str  # our metric (perpo/evaluation/metrics.py)
    scale: float = 1.0  # ours * scale is in the paper's units
    decimals: int = 2
    dataset: str | None = None  # grounding: the benchmark the column is evaluated on
    split: str | None = None
    # how ours is computed, and whether that is the paper's definition
    definition: str = ""
    same: bool = True
    # read when ``metric`` is missing; never the paper's definition (e.g. METEOR without WordNet)
    fallback: str | None = None
    fallback_definition: str = ""
    # results written before ours had the paper's definition lack this metric: not comparable
    since: str | None = None

    def read(self, metrics: dict) -> tuple[float, bool] | None:
        """(ours in the paper's units, computed the paper's way?) from a run's metrics, or None."""
        current = self.since is None or self.since in metrics
        for name, same in ((self.metric, self.same), (self.fallback, False)):
            value = metrics.get(name) if name else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value) * self.scale, same and current
        return None


@dataclass(frozen=True)
class PaperTable:
    name: str
    title: str
    note: str
    columns: tuple[Column, ...]


_DATASETS = (("RefCOCO", "refcoco", ("val", "testA", "testB")), ("RefCOCO+", "refcocoplus", ("val", "testA", "testB")),
             ("RefCOCOg", "refcocog", ("val", "test")))  # fmt: skip
_ACC_DEF = "share of answers whose box (parsed from the answer; unparsed = miss) has IoU >= 0.5 with the true box, the standard RefCOCO Acc@0.5"
_NOUGAT = "Nougat's compute_metrics per page (nougat/metrics.py), mean over the pages it scores (both texts >= 4 characters)"
TABLES: dict[str, PaperTable] = {
    "grounding": PaperTable(
        "grounding",
        "Grounding: Acc@0.5 (%) on RefCOCO / RefCOCO+ / RefCOCOg",
        "ours: acc@0.5 x 100",
        tuple(
            Column(f"{prefix}_{split}", f"{name} {split}", "acc@0.5", 100.0, 1, name, split, definition=_ACC_DEF)
            for name, prefix, splits in _DATASETS
            for split in splits
        ),
    ),
    "ocr": PaperTable(
        "ocr",
        "Dense OCR: page test set",
        "EditDist: normalized edit distance, lower is better; the others higher is better",
        (
            Column("edit_distance", "EditDist", "edit_distance", since="scored_rate",
                   definition=f"Levenshtein(pred, gt) / max(len(pred), len(gt)) on the raw page text; {_NOUGAT}"),
            Column("f1", "F1", "f1", since="scored_rate", definition=f"harmonic mean of Prec and Rec; {_NOUGAT}"),
            Column("precision", "Prec", "precision", since="scored_rate",
                   definition=f"|gt words ∩ pred words| / |pred words| over the SETS of whitespace-split words; {_NOUGAT}"),
            Column("recall", "Rec", "recall", since="scored_rate",
                   definition=f"|gt words ∩ pred words| / |gt words| over the word SETS; {_NOUGAT}"),
            Column("bleu", "BLEU", "bleu", since="scored_rate",
                   definition=f"nltk.translate.bleu([gt words], pred words), sentence BLEU-4 without smoothing; {_NOUGAT}"),
            Column("meteor", "METEOR", "meteor", since="scored_rate",
                   definition=f"nltk METEOR with WordNet synonyms; {_NOUGAT}",
                   fallback="meteor_nosyn",
                   fallback_definition="meteor_nosyn: nltk METEOR without the WordNet synonym stage (no WordNet data on the machine that evaluated)"),
        ),  # fmt: skip
    ),
}
METHOD_ORDER = ("base", "SFT", "DPO", "PerPO")


def dataset_of(path: str | None) -> str | None:
    """RefCOCO / RefCOCO+ / RefCOCOg for an lmms-lab hub id (lmms-lab/RefCOCOplus) or a local copy
    with the name in its path (/data/refcocog/...); None otherwise."""
    for part in reversed(Path(str(path or "")).parts):
        name = part.lower()
        at = name.rfind("refcoco")
        if at < 0:
            continue
        rest = name[at + len("refcoco") :].lstrip("_-")
        if rest.startswith(("+", "plus")):
            return "RefCOCO+"
        return "RefCOCOg" if rest.startswith("g") else "RefCOCO"
    return None


def eval_source(config: dict, split: str | None) -> tuple[str | None, str | None]:
    """(dataset path, the dataset's split) that our ``split`` was read from."""
    data = config.get("data") or {}
    mapping = (data.get("splits") or {}).get(split) if split else None
    if isinstance(mapping, dict):
        return mapping.get("path", data.get("path")), mapping.get("split")
    return data.get("path"), mapping


@dataclass
class Cell:
    values: dict[str, float] = field(default_factory=dict)  # evaluated model -> value (paper units)
    differs: set[str] = field(default_factory=set)  # evaluated models whose value is not the paper's definition

    @property
    def comparable(self) -> bool:
        return not self.differs

    def stats(self) -> tuple[float, float, int] | None:
        v = [x for x in self.values.values() if not math.isnan(x)]
        if not v:
            return None
        return statistics.mean(v), statistics.pstdev(v) if len(v) > 1 else 0.0, len(v)


@dataclass
class Row:
    table: str
    model: str
    method: str
    order: float
    paper: dict = field(default_factory=dict)
    cells: dict[str, Cell] = field(default_factory=lambda: defaultdict(Cell))


def paper_rows_from_conf(conf_dir: str | Path | None = PAPER_CONF) -> list[dict]:
    """The ``paper:`` blocks of the row files (conf/experiment/paper/*.yaml, not the _bases)."""
    if conf_dir is None or not Path(conf_dir).is_dir():
        return []
    from omegaconf import OmegaConf

    blocks = []
    for path in sorted(Path(conf_dir).glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        block = OmegaConf.to_container(OmegaConf.load(path)).get("paper")
        if isinstance(block, dict) and block.get("table") and block.get("model") and block.get("method"):
            blocks.append(block)
    return blocks


def _norm(path: str, root: str | None) -> str:
    """A model's identity: its path made absolute against the run's paths.root (hub ids alike)."""
    path = str(path)
    return os.path.normpath(path if os.path.isabs(path) or not root else os.path.join(root, path))


def _measurements(run: dict):
    """(row key, paper block or None, column keys -> value, identity of the evaluated model), and
    a reason string instead when the run does not belong in a paper table."""
    config = run.get("config") or {}
    paper = config.get("paper") or {}
    table = TABLES.get(paper.get("table") or "")
    if table is None or not paper.get("model") or not paper.get("method"):
        return "no paper block"
    root = config_value(config, "paths.root")
    if run["_kind"] == "eval":
        split = run.get("split") or config_value(config, "eval.split")
        if run.get("blank_image") or config_value(config, "eval.blank_image"):
            return "evaluated on blank images"
        checkpoint = run.get("checkpoint") or config_value(config, "model.path") or run["_file"]
        found = [((table.name, paper["model"], paper["method"]), paper, run.get("metrics") or {}, _norm(checkpoint, root))]
    else:
        split = config_value(config, "eval.split")
        if config_value(config, "eval.blank_image"):
            return "evaluated on blank images"
        found = []
        if run.get("after") and not config_value(config, "data.blank_image"):
            out = config_value(config, "paths.output_dir") or str(Path(run["_file"]).parent)
            found.append(((table.name, paper["model"], paper["method"]), paper, run["after"], _norm(os.path.join(out, "model"), root)))
        if run.get("before") and config_value(config, "warmstart.enabled") is False:  # the checkpoint itself: the base row
            base = run.get("base") or config_value(config, "model.path") or ""
            found.append(((table.name, paper["model"], "base"), None, run["before"], _norm(base, root)))
        if not found:
            return "trained without images" if config_value(config, "data.blank_image") else "no metrics"
    path, ds_split = eval_source(config, split)
    if table.name == "grounding":
        columns = [c for c in table.columns if c.dataset == dataset_of(path) and c.split == ds_split]
        if not columns:
            return f"split {dataset_of(path) or path} {ds_split} is not a column"
    else:
        if split != "test":
            return f"split {split} is not the test split"
        columns = list(table.columns)
    out = []
    for row_key, block, metrics, identity in found:
        values = {c.key: read for c in columns if (read := c.read(metrics)) is not None}
        if values:
            out.append((row_key, block, values, f"{identity}|{path}|{ds_split}"))
    return out or "no metric of the table"


def paper_table(runs: list[dict], conf_dir: str | Path | None = PAPER_CONF) -> tuple[dict[str, list[Row]], dict[str, int]]:
    """table -> rows in the paper's order (ours gathered from ``runs``), and skip reasons -> count.

    A (row, column, evaluated model) counts once: evaluate.py's eval.json wins over a training run's
    own before/after numbers on the same split; several models (seeds) of a row are averaged."""
    rows: dict[tuple[str, str, str], Row] = {}
    from_runs: set[tuple[str, str, str]] = set()

    def row(key, block, *, run: bool = True):
        if key not in rows:
            rows[key] = Row(*key, order=math.inf)
        r = rows[key]
        if block and (not r.paper or (run and key not in from_runs)):  # the first run's block wins over conf's
            r.paper = {**r.paper, **block}
            if block.get("row") is not None:
                r.order = float(block["row"])
            if run:
                from_runs.add(key)
        return r

    for block in paper_rows_from_conf(conf_dir):
        row((block["table"], block["model"], block["method"]), block, run=False)
    skipped: dict[str, int] = defaultdict(int)
    for run in sorted(runs, key=lambda r: r.get("_kind") != "eval"):  # eval.json first: it wins duplicates
        found = _measurements(run)
        if isinstance(found, str):
            skipped[found] += 1
            continue
        for key, block, values, identity in found:
            r = row(key, block)
            for column, (value, same) in values.items():
                cell = r.cells[column]
                if identity not in cell.values:
                    cell.values[identity] = value
                    if not same:
                        cell.differs.add(identity)
    tables: dict[str, list[Row]] = {}
    for name in TABLES:
        members = [r for r in rows.values() if r.table == name]
        model_first = {}
        for r in sorted(members, key=lambda r: r.order):
            model_first.setdefault(r.model, r.order)
        method_rank = {m: i for i, m in enumerate(METHOD_ORDER)}
        members.sort(key=lambda r: (r.order, model_first[r.model], r.model, method_rank.get(r.method, 99), r.method))
        if members:
            tables[name] = members
    return tables, dict(skipped)


def _fmt(value: float | None, decimals: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"
    return "0." + "0" * decimals if signed and float(text) == 0 else text


NOT_COMPARABLE = "†"


def definitions_markdown(table: PaperTable) -> str:
    """One line per column: how ours is computed and whether that is the paper's definition."""
    lines = []
    for c in table.columns:
        if table.name == "grounding" and c is not table.columns[0]:
            continue  # one definition for every benchmark column
        name = "every column" if table.name == "grounding" else c.header
        lines.append(f"- {name}: {'same definition as the paper' if c.same else 'NOT the paper definition'} ({c.definition})")
        if c.fallback:
            lines.append(f"  - {NOT_COMPARABLE} where `{c.metric}` is missing: {c.fallback_definition}; not comparable to the paper")
    if any(c.since for c in table.columns):
        since = next(c.since for c in table.columns if c.since)
        lines.append(f"- {NOT_COMPARABLE} also marks results written before these definitions (no `{since}`): not comparable")
    return "\n".join(lines)


def paper_markdown(tables: dict[str, list[Row]], skipped: dict[str, int] | None = None) -> str:
    parts = []
    for name, rows in tables.items():
        table = TABLES[name]
        legend = (
            f"ours: mean over evaluated models (n); paper: the release's README; Δ = ours − paper; "
            f"{NOT_COMPARABLE}: not the paper's definition, Δ n/c (not comparable). {table.note}."
        )
        lines = []
        for r in rows:
            stats = {c.key: r.cells[c.key].stats() if c.key in r.cells else None for c in table.columns}
            same = {c.key: c.key not in r.cells or r.cells[c.key].comparable for c in table.columns}
            n = max((s[2] for s in stats.values() if s), default=0)
            ours = [
                _fmt(stats[c.key][0] if stats[c.key] else None, c.decimals) + ("" if same[c.key] or not stats[c.key] else NOT_COMPARABLE)
                for c in table.columns
            ]  # fmt: skip
            theirs = [_fmt(_number(r.paper.get(c.key)), c.decimals) for c in table.columns]
            delta = [
                ("n/c" if not same[c.key] else _fmt(stats[c.key][0] - _number(r.paper.get(c.key)), c.decimals, signed=True))
                if stats[c.key] and _number(r.paper.get(c.key)) is not None else "-"
                for c in table.columns
            ]  # fmt: skip
            label = "ours" if n <= 1 else f"ours (n={n})"
            lines += [[r.model, r.method, label, *ours], ["", "", "paper", *theirs], ["", "", "Δ", *delta]]
        header = ["model", "method", "", *(c.header for c in table.columns)]
        definitions = "How ours is computed:\n\n" + definitions_markdown(table)
        parts.append(f"## {table.title}\n\n{legend}\n\n" + markdown_table(header, lines, label_columns=3) + f"\n\n{definitions}")
    if not parts:
        parts.append("no paper rows: no conf/experiment/paper/ and no run with a paper block")
    if skipped:
        parts.append("Not in the tables: " + "; ".join(f"{n} run(s): {why}" for why, n in sorted(skipped.items())) + ".")
    return "\n\n".join(parts) + "\n"


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# -- the list-size figure ------------------------------------------------------------------------

FIGURE_METRIC = {"grounding": "acc@0.5", "ocr": "edit_distance", "counting": "accuracy"}
ORACLE = "best-of-N (oracle)"
LABELS = {"perpo": "PerPO", "dpo": "DPO", "lipo": "LiPO", "sft": "SFT"}
CURVE_ORDER = (ORACLE, "PerPO", "DPO", "LiPO", "SFT")
# The release's figure (RefCOCOg, LLaVA-v1.5; read off the plot, +-0.2), acc@0.5 as a fraction.
PAPER_LISTSIZE = {
    ORACLE: {2: 0.534, 4: 0.619, 8: 0.684, 12: 0.716, 20: 0.745},
    "PerPO": {2: 0.573, 4: 0.585, 8: 0.593, 12: 0.594, 20: 0.598},
    "DPO": {2: 0.540, 4: 0.546, 8: 0.552, 12: 0.554, 20: 0.554},
    "SFT": {2: 0.549, 4: 0.549, 8: 0.549, 12: 0.549, 20: 0.549},
}


def listsize_curves(results: list[dict], metric: str | None = None) -> dict[str, dict[str, dict[int, tuple[float, float, int]]]]:
    """task -> curve -> N -> (mean, std, n) of the task's metric after training, by list size N
    (``config.listsize``). The best-of-N oracle is ``best_of_n_<metric>`` (e.g. ``best_of_n_acc@0.5``,
    written with ``eval.best_of_n=true``) from ``before`` (or ``after``): one value per (task, seed,
    N, base), as it depends on the base's samples only."""
    points: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    seen_oracle = set()
    for r in results:
        config = r.get("config") or {}
        n, after = config.get("listsize"), r.get("after") or {}
        if not isinstance(n, int) or not after:
            continue
        task = r.get("task", "?")
        key = metric or FIGURE_METRIC.get(task)
        if isinstance(after.get(key), (int, float)):
            points[task][LABELS.get(r["loss"], r["loss"])][n].append(float(after[key]))
        oracle_key = f"best_of_n_{key}"
        oracle = (r.get("before") or {}).get(oracle_key, after.get(oracle_key))
        ident = (task, r.get("seed"), n, r.get("base"))
        if isinstance(oracle, (int, float)) and ident not in seen_oracle:
            seen_oracle.add(ident)
            points[task][ORACLE][n].append(float(oracle))
    rank = {c: i for i, c in enumerate(CURVE_ORDER)}
    return {
        task: {
            label: {n: (statistics.mean(v), statistics.pstdev(v) if len(v) > 1 else 0.0, len(v)) for n, v in sorted(by_n.items())}
            for label, by_n in sorted(curves.items(), key=lambda kv: (rank.get(kv[0], 99), kv[0]))
        }
        for task, curves in sorted(points.items())
    }


def listsize_markdown(curves: dict, metric: str | None = None) -> str:
    parts = []
    for task, by_label in curves.items():
        sizes = sorted({n for c in by_label.values() for n in c})
        title = f"## List size: {task}, {metric or FIGURE_METRIC.get(task)} after training by N (mean ± std (n))"
        rows = [[label, *(_mean_std(by_n, n) for n in sizes)] for label, by_n in by_label.items()]
        parts.append(title + "\n\n" + markdown_table(["method", *(f"N={n}" for n in sizes)], rows))
    return "\n\n".join(parts) + "\n" if parts else "no results.json with config.listsize and after-metrics\n"


def render_listsize_figure(curves: dict, out: str | Path, *, metric: str | None = None, with_paper: bool = False) -> bool:
    """The list-size figure as a PNG (written atomically). False, with one line on stderr, when
    matplotlib is not installed or there is nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("perpo.reporting.report: matplotlib is not installed, so no figure was written (pip install matplotlib)", file=sys.stderr)
        return False
    if not curves:
        print("perpo.reporting.report: no runs with config.listsize and after-metrics, so no figure was written", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    colors = {label: f"C{i}" for i, label in enumerate(CURVE_ORDER)}
    for ax, (task, by_label) in zip(axes[0], curves.items()):
        sizes = {n for c in by_label.values() for n in c}
        for i, (label, by_n) in enumerate(by_label.items()):
            color = colors.get(label, f"C{len(CURVE_ORDER) + i}")
            xs = sorted(by_n)
            ys, errs = [by_n[n][0] for n in xs], [by_n[n][1] for n in xs]
            if len(xs) == 1 and label == "SFT":  # SFT samples no lists: one value for every N
                ax.axhline(ys[0], linestyle="--", color=color, label=f"{label} (any N)")
            else:
                ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=color, label=label)
        if with_paper and task == "grounding":
            for label, by_n in PAPER_LISTSIZE.items():
                xs = sorted(by_n)
                sizes |= set(xs)
                ax.plot(xs, [by_n[n] for n in xs], linestyle=":", color=colors[label], alpha=0.6, label=f"{label}, paper")
        ax.set_xticks(sorted(sizes) or [2])
        ax.set_xlabel("list size N")
        ax.set_ylabel(metric or FIGURE_METRIC.get(task, "metric"))
        ax.set_title(f"{task}: {metric or FIGURE_METRIC.get(task, 'metric')} after training vs list size")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120), suffix=".png")
    finally:
        plt.close(fig)
    return True


# -- command line --------------------------------------------------------------------------------


def _print_rich(summary: dict) -> None:
    for task in sorted({t for t, _ in summary}):
        methods = sorted((m for (t, m) in summary if t == task), key=lambda m: (m != "base", m))
        metrics = list(dict.fromkeys(k for m in methods for k in summary[(task, m)]))
        rows = [[m, *(_mean_std(summary[(task, m)], k) for k in metrics)] for m in methods]
        print_table(f"{task}: mean ± std over seeds (n)", ["method", *metrics], rows)


def _mean_std(stats: dict, key) -> str:
    """``mean ± std (n)`` of ``stats[key] = (mean, std, n)``, or ``-``."""
    if key not in stats:
        return "-"
    mean, std, n = stats[key]
    return f"{mean:.4f} ± {std:.4f} ({n})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perpo.reporting", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="folders searched recursively for results.json / eval.json")
    parser.add_argument("--paper", action="store_true", help="the paper's tables, ours beside the paper's numbers")
    parser.add_argument("--paper-conf", default=str(PAPER_CONF), help="the row files (default: conf/experiment/paper)")
    parser.add_argument("--figure", metavar="PNG", help="write the list-size figure (metric vs N per method)")
    parser.add_argument("--figure-paper", action="store_true", help="overlay the release's list-size figure (grounding)")
    parser.add_argument("--metric", help="the figure's metric (default: acc@0.5 / edit_distance / accuracy by task)")
    parser.add_argument("--by", default="", help="config keys splitting methods in the summary, e.g. margin.gamma,data.blank_image")
    parser.add_argument("--out", metavar="MD", help="also write the markdown to this file (atomically)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for folder in args.folders:
        if not Path(folder).is_dir():
            parser.error(f"{folder} is not a folder")

    sections = []
    if args.paper:
        tables, skipped = paper_table(collect_runs(args.folders), args.paper_conf)
        sections.append(paper_markdown(tables, skipped))
    if args.figure:
        curves = listsize_curves(collect_runs(args.folders, evals=False), args.metric)
        sections.append(listsize_markdown(curves, args.metric))
        if render_listsize_figure(curves, args.figure, metric=args.metric, with_paper=args.figure_paper):
            sections.append(f"Figure: {args.figure}\n")
    if sections:
        text = "\n".join(sections)
        print(text, end="")
    else:
        summary = summarize(collect_runs(args.folders, evals=False), by=[k for k in args.by.split(",") if k])
        _print_rich(summary)
        text = summary_markdown(summary)
    if args.out:
        write_text_atomic(args.out, text)


if __name__ == "__main__":
    main()
