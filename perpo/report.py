"""Summarize results.json files (e.g. of a multirun sweep): mean and spread per method.

    python -m perpo.report outputs/multirun/2026-11-28/00-10-00
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def collect(root: str | Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(root).rglob("results.json"))]


def summarize(results: list[dict]) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    """(task, method) -> metric -> (mean, std, n); the SFT base appears as method 'base'."""
    groups: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    seen_base = set()
    for r in results:
        for method, metrics in (("base", r.get("before")), (r["loss"], r.get("after"))):
            if not metrics:
                continue
            if method == "base":  # one base per (task, seed), whatever loss ran after it
                if (r["task"], r["seed"]) in seen_base:
                    continue
                seen_base.add((r["task"], r["seed"]))
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    groups[(r["task"], method)][k].append(float(v))
    return {
        key: {k: (statistics.mean(v), statistics.pstdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in m.items()}
        for key, m in groups.items()
    }


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.exit("usage: python -m perpo.report <folder with results.json files>")
    summary = summarize(collect(argv[0]))
    for task in sorted({t for t, _ in summary}):
        methods = [m for (t, m) in summary if t == task]
        metrics = list(dict.fromkeys(k for m in methods for k in summary[(task, m)]))
        table = Table(title=f"{task}: mean ± std over seeds (n)")
        table.add_column("method")
        for k in metrics:
            table.add_column(k, justify="right")
        for m in sorted(methods, key=lambda m: (m != "base", m)):
            row = summary[(task, m)]
            table.add_row(m, *(f"{row[k][0]:.4f} ± {row[k][1]:.4f} ({row[k][2]})" if k in row else "-" for k in metrics))
        Console().print(table)


if __name__ == "__main__":
    main()
