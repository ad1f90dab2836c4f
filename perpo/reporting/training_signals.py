"""What the preference runs of a sweep saw while training, per method: the numbers that say why
methods do or do not separate (issue 16's "if PerPO does not separate").

From each run's CSV log (``<run>/csv/version_0/metrics.csv``, ``logger=csv``):

- ``reward_spread``: best minus worst reward of a list, mean over the run's steps (a list without
  spread teaches nothing);
- ``kept_fraction``: the share of lists the spread filter kept (``data.min_margin``);
- ``unparsed``: the share of sampled answers that held no answer;
- ``pair_accuracy``: the share of (best, worst) pairs the policy already ranks right (last 10 steps);
- ``policy_minus_ref``: the mean implicit reward log pi - log ref of the answers at the last step,
  how far the policy has drifted from the reference;
- ``gap_best_worst``: the implicit-reward gap between the best and the worst answer at the last step.

    python -m perpo.reporting.training_signals outputs/multirun/demonstration-.../methods --out docs/results/training_signals.md
    python -m perpo.reporting.training_signals outputs/multirun/ablation-listsize-... --by listsize   # one row per N
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from perpo.atomic import write_text_atomic
from perpo.reporting.intervals import setting_label, setting_order
from perpo.reporting.report import collect_runs, method_of
from perpo.reporting.tables import markdown_table

#: column -> (logged key, how the run's steps are reduced)
SIGNALS: dict[str, tuple[str, str]] = {
    "reward_spread": ("train/reward_spread", "mean"),
    "kept_fraction": ("train/kept_fraction", "mean"),
    "unparsed": ("train/unparsed_fraction", "mean"),
    "pair_accuracy": ("train/pair_accuracy", "last10"),
    "policy_minus_ref": ("train/policy_minus_ref", "last"),
    "gap_best_worst": ("train/score_gap_best_worst", "last"),
}


def run_signals(metrics_csv: str | Path) -> dict[str, float]:
    """:data:`SIGNALS` of one run's CSV log (a signal the run never logged is left out)."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with Path(metrics_csv).open() as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key.startswith("train/") and value not in ("", None):
                    series[key].append((int(row["step"]), float(value)))
    out: dict[str, float] = {}
    for name, (key, how) in SIGNALS.items():
        values = [v for _, v in sorted(series.get(key, []))]
        if not values:
            continue
        picked = {"mean": values, "last": values[-1:], "last10": values[-10:]}[how]
        out[name] = sum(picked) / len(picked)
    return out


def signals_by_method(roots: Iterable[str | Path], by: str | None = None) -> dict[str, list[dict[str, float]]]:
    """method (``loss`` plus ``+blank``) -> the signals of each of its runs; with ``by`` (an
    ablation's swept key) labelled by its setting, as perpo.reporting.intervals does (``perpo@listsize=8``)."""
    out: dict[str, list[dict[str, float]]] = defaultdict(list)
    for run in collect_runs(roots, evals=False):
        log = Path(run["_file"]).parent / "csv" / "version_0" / "metrics.csv"
        if not log.exists():
            continue
        signals = run_signals(log)
        if signals:
            out[method_of(run) + setting_label(run, by)].append(signals)
    return dict(out)


def signals_markdown(by_method: Mapping[str, list[dict[str, float]]]) -> str:
    rows = []
    ablation = any("@" in m for m in by_method)  # labelled runs: by setting (N = 2 before 12), then method
    for method in sorted(by_method, key=setting_order if ablation else None):
        runs = by_method[method]
        cells = []
        for name in SIGNALS:
            values = [r[name] for r in runs if name in r]
            cells.append(f"{sum(values) / len(values):.3f}" if values else "-")
        rows.append([method, str(len(runs)), *cells])
    return markdown_table(["method", "runs", *SIGNALS], rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perpo.reporting.training_signals", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="folders searched for results.json with csv/version_0/metrics.csv")
    parser.add_argument("--out", default=None, help="write the markdown table here")
    parser.add_argument("--by", default=None, help="an ablation's swept config key (listsize, margin.gamma): one row per method and setting")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    text = signals_markdown(signals_by_method(args.folders, by=args.by))
    if args.out:
        command = " ".join(["python -m perpo.reporting.training_signals", *argv])
        write_text_atomic(args.out, f"Training signals, mean over each method's runs (perpo.reporting.training_signals)\n\nCommand: `{command}`\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
