"""perpo.reporting.training_signals: the numbers behind "why do the methods not separate"."""

import csv
import json

import pytest

from perpo.reporting.training_signals import run_signals, signals_by_method, signals_markdown


def _run(folder, loss, rows, blank=False):
    log = folder / "csv" / "version_0"
    log.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"task": "grounding", "loss": loss, "seed": 1, "config": {"data": {"blank_image": blank}}}))
    keys = sorted({k for r in rows for k in r})
    with (log / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", *keys])
        writer.writeheader()
        for r in rows:
            writer.writerow({"epoch": 0, **r})


def test_signals_by_hand(tmp_path):
    """Steps logged out of order and val rows without train keys: spread is the mean over steps
    (0.2 + 0.4 + 0.6) / 3, drift the last step's value, pair accuracy the mean of the last 10."""
    rows = [
        {"step": 2, "train/reward_spread": 0.6, "train/kept_fraction": 1.0, "train/policy_minus_ref": 0.3},
        {"step": 0, "train/reward_spread": 0.2, "train/kept_fraction": 0.5, "train/policy_minus_ref": 0.0},
        {"step": 1, "train/reward_spread": 0.4, "train/kept_fraction": 0.75, "train/pair_accuracy": 0.5},
        {"step": 1, "val/acc@0.5": 0.3},
    ]
    _run(tmp_path / "a", "perpo", rows)
    signals = run_signals(tmp_path / "a" / "csv" / "version_0" / "metrics.csv")
    assert signals == pytest.approx({"reward_spread": 0.4, "kept_fraction": 0.75, "pair_accuracy": 0.5, "policy_minus_ref": 0.3})
    _run(tmp_path / "b", "dpo", rows, blank=True)
    by_method = signals_by_method([tmp_path])
    assert set(by_method) == {"perpo", "dpo+blank"}
    text = signals_markdown(by_method)
    assert "| perpo | 1 | 0.400 | 0.750 | - | 0.500 | 0.300 | - |" in text
    # the written table carries the command that made it
    from perpo.reporting.training_signals import main

    main([str(tmp_path), "--out", str(tmp_path / "signals.md")])
    written = (tmp_path / "signals.md").read_text()
    assert f"Command: `python -m perpo.reporting.training_signals {tmp_path} --out {tmp_path / 'signals.md'}`" in written
    assert "| perpo | 1 | 0.400 |" in written


def test_an_ablation_gets_one_row_per_setting_in_numeric_order(tmp_path):
    """--by listsize: each run labelled by its N (perpo@listsize=12 sorts after perpo@listsize=2,
    not before it as text would); a sweep folder without the key is refused by name."""
    from perpo.reporting.training_signals import main

    for n, spread in ((12, 0.9), (2, 0.3)):
        _run(tmp_path / f"n{n}", "perpo", [{"step": 0, "train/reward_spread": spread}])
        results = json.loads((tmp_path / f"n{n}" / "results.json").read_text())
        results["config"]["listsize"] = n
        (tmp_path / f"n{n}" / "results.json").write_text(json.dumps(results))
    text = signals_markdown(signals_by_method([tmp_path], by="listsize"))
    rows = [line for line in text.splitlines() if line.startswith("| perpo")]
    assert rows == ["| perpo@listsize=2 | 1 | 0.300 | - | - | - | - | - |", "| perpo@listsize=12 | 1 | 0.900 | - | - | - | - | - |"]
    with pytest.raises(ValueError, match="no config value 'margin.gamma'"):
        main([str(tmp_path), "--by", "margin.gamma"])
