"""perpo.report: mean and spread per (task, method) over results.json files; base counted once per seed."""

import json

import pytest

from perpo.report import collect, summarize


def _write(root, name, loss, seed, before, after):
    run = root / name
    run.mkdir(parents=True)
    payload = {"task": "grounding", "loss": loss, "seed": seed, "before": {"acc@0.5": before}, "after": {"acc@0.5": after}}
    (run / "results.json").write_text(json.dumps(payload))


def test_summary_means_and_base_once_per_seed(tmp_path):
    # seed 1: base 0.4 -> perpo 0.5, dpo 0.45 ; seed 2: base 0.2 -> perpo 0.3, dpo 0.15
    _write(tmp_path, "0", "perpo", 1, 0.4, 0.5)
    _write(tmp_path, "1", "dpo", 1, 0.4, 0.45)
    _write(tmp_path, "2", "perpo", 2, 0.2, 0.3)
    _write(tmp_path, "3", "dpo", 2, 0.2, 0.15)
    summary = summarize(collect(tmp_path))
    mean, std, n = summary[("grounding", "base")]["acc@0.5"]
    assert n == 2  # two seeds, not four runs
    assert mean == pytest.approx(0.3) and std == pytest.approx(0.1)  # population std of {0.4, 0.2}
    assert summary[("grounding", "perpo")]["acc@0.5"] == pytest.approx((0.4, 0.1, 2))
    mean, std, n = summary[("grounding", "dpo")]["acc@0.5"]
    assert (mean, n) == (pytest.approx(0.3), 2) and std == pytest.approx(0.15)


def test_empty_folder_gives_empty_summary(tmp_path):
    assert summarize(collect(tmp_path)) == {}
