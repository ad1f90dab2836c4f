"""Paired bootstrap intervals (hand-checkable cases) and demonstration.json from run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perpo.reporting.intervals import build_demonstration, item_metric, main, paired_bootstrap, read_predictions


# -- the bootstrap -------------------------------------------------------------------------------


def test_identical_methods_give_a_zero_width_interval_at_zero():
    rng = np.random.default_rng(0)
    a = rng.random((5, 200))
    assert paired_bootstrap(a, a.copy()) == (0.0, 0.0, 0.0)


def test_a_constant_shift_gives_exactly_that_shift():
    b = np.array([[0.25, 0.5, 0.75, 0.0], [1.0, 0.5, 0.25, 0.75]])
    assert paired_bootstrap(b + 0.125, b) == (0.125, 0.125, 0.125)  # binary fractions: exact
    rng = np.random.default_rng(1)
    b = rng.random((3, 50))
    mean, lo, hi = paired_bootstrap(b + 0.1, b)  # decimal 0.1: exact up to float rounding of a - b
    assert mean == pytest.approx(0.1, abs=1e-12) and lo == pytest.approx(0.1, abs=1e-12) and hi == pytest.approx(0.1, abs=1e-12)


def test_two_items_by_hand():
    # one seed, differences [0, 1]: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4,
    # so the 2.5th percentile is 0 and the 97.5th is 1
    assert paired_bootstrap([1.0, 1.0], [1.0, 0.0]) == (0.5, 0.0, 1.0)
    # four items [1, 1, 1, 0] (mean 0.75): P(resampled mean = 1) = (3/4)^4 = 0.316 > 2.5%, and
    # P(mean <= 0.25) = P(at most one 1 of 4 draws) = (1/4)^4 + 4 (3/4)(1/4)^3 = 0.051, P(mean = 0) = 0.004
    mean, lo, hi = paired_bootstrap([1, 1, 1, 0], [0, 0, 0, 0])
    assert (mean, lo, hi) == (0.75, 0.25, 1.0)


def test_seeds_are_resampled_too():
    # seed 1 gains nothing on every item, seed 2 gains 1 on every item: items alone explain no
    # spread, the seeds do -- the mean over two resampled seeds is 0, 0.5, 1 w.p. 1/4, 1/2, 1/4
    a = np.array([[0.0] * 10, [1.0] * 10])
    b = np.zeros((2, 10))
    assert paired_bootstrap(a, b) == (0.5, 0.0, 1.0)
    assert paired_bootstrap(a, b, resample_seeds=False) == (0.5, 0.5, 0.5)


def test_a_large_sample_matches_the_normal_approximation_and_is_seeded():
    rng = np.random.default_rng(2)
    d = rng.normal(0.1, 1.0, size=400)
    mean, lo, hi = paired_bootstrap(d, np.zeros_like(d))
    se = d.std() / np.sqrt(len(d))
    assert lo == pytest.approx(mean - 1.96 * se, abs=0.15 * se) and hi == pytest.approx(mean + 1.96 * se, abs=0.15 * se)
    assert paired_bootstrap(d, np.zeros_like(d)) == (mean, lo, hi)  # the same seed, the same interval
    assert paired_bootstrap(d, np.zeros_like(d), seed=1) != (mean, lo, hi)
    wide = paired_bootstrap(d, np.zeros_like(d), confidence=0.99)
    assert wide[1] < lo and wide[2] > hi


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same seeds and items"):
        paired_bootstrap(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        paired_bootstrap([0.0, float("nan")], [0.0, 0.0])
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap([], [])


def test_item_metrics():
    assert item_metric("grounding", "acc@0.5", np.array([0.2, 0.5, 0.4999999999999, 0.9])).tolist() == [0, 1, 1, 1]
    assert item_metric("grounding", "miou", [0.2, 0.9]).tolist() == [0.2, 0.9]
    with pytest.raises(ValueError, match="no per-item form"):
        item_metric("counting", "mae", [1.0])


# -- demonstration.json from run folders --------------------------------------------------------

IDS = [f"grounding-0-test-{i:06d}" for i in range(6)]
# per-item IoUs of the base and each method (seed offsets below keep the differences per seed)
IOUS = {
    "base": [0.1, 0.2, 0.6, 0.3, 0.0, 0.55],
    "sft": [0.3, 0.2, 0.6, 0.5, 0.1, 0.55],
    "dpo": [0.3, 0.4, 0.6, 0.5, 0.1, 0.65],
    "perpo": [0.5, 0.6, 0.7, 0.5, 0.3, 0.75],
}


def _write_run(folder: Path, loss: str, seed: int, *, predictions: bool = True, blank: bool = False, ids=IDS) -> None:
    folder.mkdir(parents=True)
    shift = 0.01 * seed

    def scores(method):
        return [min(1.0, v + shift) for v in IOUS[method]]

    def metrics(values):
        return {"acc@0.5": float(np.mean([v >= 0.5 for v in values])), "miou": float(np.mean(values)), "parse_rate": 1.0}

    results = {
        "task": "grounding", "loss": loss, "seed": seed, "base": "cache/base",
        "before": metrics(scores("base")), "after": metrics(scores(loss)),
        "config": {"data": {"blank_image": blank}},
    }  # fmt: skip
    (folder / "results.json").write_text(json.dumps(results))
    if predictions:
        for name, method in (("before", "base"), ("after", loss)):
            rows = [{"id": i, "prediction": "[0, 0, 1, 1]", "score": s} for i, s in zip(ids, scores(method))]
            (folder / f"predictions_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_demonstration_from_fabricated_runs(tmp_path):
    sweep = tmp_path / "sweep"
    for n, (loss, seed) in enumerate((l, s) for s in (1, 2, 3) for l in ("sft", "dpo", "perpo")):
        _write_run(sweep / f"{n}-grounding-{loss}-seed{seed}", loss, seed)
    _write_run(sweep / "9-grounding-perpo-blank-seed1", "perpo", 1, blank=True)
    out = tmp_path / "demonstration.json"
    main([str(sweep), "--out", str(out), "--command", "bash sweeps/demonstration.sh", "--resamples", "2000"])
    summary = json.loads(out.read_text())

    assert summary["test_items"] == 6 and summary["seeds"] == [1, 2, 3]
    assert summary["commands"] == ["bash sweeps/demonstration.sh"]
    assert list(summary["methods"]) == ["base", "sft", "dpo", "perpo", "perpo+blank"]
    assert summary["methods"]["perpo+blank"]["grounding/miou"][1:] == [None, None]
    for method in ("base", "sft", "dpo", "perpo"):
        miou = summary["methods"][method]["grounding/miou"]
        assert miou == pytest.approx([np.mean([min(1.0, v + 0.01 * s) for v in IOUS[method]]) for s in (1, 2, 3)])
    assert set(summary["methods"]["perpo"]) == {"grounding/acc@0.5", "grounding/miou", "grounding/parse_rate"}

    intervals = summary["intervals"]
    assert {"perpo-sft", "perpo-dpo"} <= set(intervals)
    # per-item differences perpo - sft: [0.2, 0.4, 0.1, 0, 0.2, 0.2] on every seed: mean 1.1 / 6
    lo, hi = intervals["perpo-sft"]["grounding/miou"]
    assert summary["differences"]["perpo-sft"]["grounding/miou"] == pytest.approx(1.1 / 6)
    assert 0 <= lo < 1.1 / 6 < hi <= 0.4
    # the same interval as the bootstrap on the same matrices
    a = np.array([[min(1.0, v + 0.01 * s) for v in IOUS["perpo"]] for s in (1, 2, 3)])
    b = np.array([[min(1.0, v + 0.01 * s) for v in IOUS["sft"]] for s in (1, 2, 3)])
    assert [lo, hi] == list(paired_bootstrap(a, b, n_boot=2000)[1:])
    # acc@0.5 from the item scores: perpo hits 4/6 (seed 1..3: 0.5+s, 0.6+s, 0.7+s, 0.5+s, 0.75+s) ...
    assert summary["differences"]["perpo-sft"]["grounding/acc@0.5"] == pytest.approx(5 / 6 - 3 / 6)
    assert summary["bootstrap"]["resamples"] == 2000


def test_demonstration_names_runs_without_predictions_and_refuses_duplicates(tmp_path):
    sweep = tmp_path / "sweep"
    _write_run(sweep / "a", "perpo", 1)
    _write_run(sweep / "b", "sft", 1, predictions=False)
    summary = build_demonstration([sweep], n_boot=100)
    assert "perpo-sft" not in summary["intervals"] and "perpo-base" in summary["intervals"]
    assert any("perpo-sft grounding" in line for line in summary["missing"])
    _write_run(tmp_path / "other" / "c", "perpo", 1)
    with pytest.raises(ValueError, match="two runs of grounding / perpo / seed 1"):
        build_demonstration([sweep, tmp_path / "other"])


def test_demonstration_refuses_different_test_items(tmp_path):
    _write_run(tmp_path / "a", "perpo", 1)
    _write_run(tmp_path / "b", "sft", 2, ids=[i + "x" for i in IDS])
    with pytest.raises(ValueError, match="other test items"):
        build_demonstration([tmp_path])


def test_read_predictions_needs_scores(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps({"id": "a", "prediction": "x"}) + "\n")
    with pytest.raises(ValueError, match="no 'score'"):
        read_predictions(path)
    path.write_text(json.dumps({"id": "a", "prediction": "x", "score": 0.5}) + "\n\n")
    assert read_predictions(path) == {"a": 0.5}


def test_retention_tasks_become_cells_of_their_own(tmp_path):
    """A run aligned on grounding with ``eval.retention=[existence]`` carries the existence probe's
    before / after in results.json["retention"] and predictions_{before,after}.existence.jsonl:
    the probe gets its own rows ("existence/accuracy", "existence/yes_rate") and intervals.
    Fails before retention was read: the summary held grounding only."""
    probe_ids = [f"existence-0-test-{i:06d}" for i in range(4)]
    right = {"base": [1, 1, 0, 0], "sft": [1, 0, 0, 0], "perpo": [1, 1, 1, 0]}
    for n, loss in enumerate(("sft", "perpo")):
        folder = tmp_path / f"{n}-{loss}"
        _write_run(folder, loss, 1)
        run = json.loads((folder / "results.json").read_text())
        run["retention"] = {
            "existence": {
                "before": {"accuracy": 0.5, "yes_rate": 0.5},
                "after": {"accuracy": float(np.mean(right[loss])), "yes_rate": 0.75},
            }
        }
        (folder / "results.json").write_text(json.dumps(run))
        for when, method in (("before", "base"), ("after", loss)):
            rows = [{"id": i, "prediction": "yes", "score": s} for i, s in zip(probe_ids, right[method])]
            (folder / f"predictions_{when}.existence.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = build_demonstration([tmp_path], n_boot=500)
    assert summary["methods"]["base"]["existence/accuracy"] == [0.5]
    assert summary["methods"]["perpo"]["existence/yes_rate"] == [0.75]
    assert summary["test_items_per_task"] == {"existence": 4, "grounding": 6}
    # perpo - sft on the probe, item by item: [0, 1, 1, 0] -> mean 0.5
    assert summary["differences"]["perpo-sft"]["existence/accuracy"] == pytest.approx(0.5)
    assert summary["differences"]["sft-base"]["existence/accuracy"] == pytest.approx(-0.25)


def test_markdown_reads_each_claim_and_the_readme_section_is_replaced(tmp_path):
    from perpo.reporting.intervals import README_END, README_START, demonstration_markdown, verdict

    sweep = tmp_path / "sweep"
    for n, (loss, seed) in enumerate((l, s) for s in (1, 2) for l in ("sft", "dpo", "perpo")):
        _write_run(sweep / f"{n}-{loss}-{seed}", loss, seed)
    summary = build_demonstration([sweep], n_boot=500)
    text = demonstration_markdown(summary)
    # methods: mean ± sd over the 2 seeds; perpo's mIoU: 3.35 / 6 + 0.01 * seed -> 0.5683, 0.5783:
    # mean 0.573, sd 0.01 / sqrt(2) = 0.007; acc@0.5: 5 of 6 items at or above 0.5 on both seeds
    assert "| perpo | 0.833 ± 0.000 | 0.573 ± 0.007 |" in text
    lo, hi = summary["intervals"]["perpo-sft"]["grounding/miou"]
    assert f"| 1. (mIoU) PerPO > SFT | `perpo-sft` grounding/miou | +0.183 | [{lo:+.3f}, {hi:+.3f}] | A > B |" in text
    assert "kept: counting" not in text  # not measured: no row
    assert (verdict(0.01, 0.2), verdict(-0.2, -0.01), verdict(-0.1, 0.1)) == ("A > B", "A < B", "level (holds 0)")

    readme = tmp_path / "README.md"
    readme.write_text(f"# perpo\n\n## Results\n{README_START}\nold numbers\n{README_END}\n\nmore\n")
    out = tmp_path / "demonstration.json"
    main([str(sweep), "--out", str(out), "--resamples", "500", "--readme", str(readme), "--markdown", str(tmp_path / "d.md")])
    new = readme.read_text()
    assert "old numbers" not in new and new.startswith("# perpo\n\n## Results\n") and new.endswith(f"{README_END}\n\nmore\n")
    assert demonstration_markdown(json.loads(out.read_text())).strip() in new
    assert (tmp_path / "d.md").read_text().startswith("# The demonstration, measured")
    readme.write_text("# no section\n")
    with pytest.raises(ValueError, match="no generated section"):
        main([str(sweep), "--out", str(out), "--resamples", "50", "--readme", str(readme)])


def test_an_ablation_labels_each_setting_and_compares_within_and_across(tmp_path):
    """``--by listsize``: each run's method and base carry its N (the base's best-of-N oracle
    depends on N); at each N PerPO - DPO and each method - that N's base, and across N each method
    against itself at the smallest N (N sorted as numbers: 4 before 12). Runs at N=4 reuse the
    demonstration's fabricated scores; at N=12 PerPO gains 0.1 more on every item, so
    perpo@N=12 - perpo@N=4 is exactly 0.1 on mIoU."""
    for n, listsize in ((4, 4), (12, 12)):
        for loss in ("dpo", "perpo"):
            folder = tmp_path / f"{loss}-N{listsize}"
            _write_run(folder, loss, 1)
            run = json.loads((folder / "results.json").read_text())
            run["config"]["listsize"] = listsize
            run["before"]["best_of_n_acc@0.5"] = 0.5 if listsize == 4 else 0.75
            if loss == "perpo" and listsize == 12:
                rows = [json.loads(line) for line in (folder / "predictions_after.jsonl").read_text().splitlines()]
                for row in rows:
                    row["score"] += 0.1
                (folder / "predictions_after.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (folder / "results.json").write_text(json.dumps(run))
    out = tmp_path / "ablation.json"
    main([str(tmp_path), "--by", "listsize", "--out", str(out), "--markdown", str(tmp_path / "ablation.md"), "--resamples", "500"])
    summary = json.loads(out.read_text())
    assert summary["ablation"] == "listsize"
    assert list(summary["methods"]) == [
        "base@listsize=4", "dpo@listsize=4", "perpo@listsize=4", "base@listsize=12", "dpo@listsize=12", "perpo@listsize=12",
    ]  # fmt: skip
    assert summary["methods"]["base@listsize=12"]["grounding/best_of_n_acc@0.5"] == [0.75]
    assert list(summary["intervals"]) == [
        "perpo@listsize=4-dpo@listsize=4", "perpo@listsize=4-base@listsize=4", "dpo@listsize=4-base@listsize=4",
        "perpo@listsize=12-dpo@listsize=12", "perpo@listsize=12-base@listsize=12", "dpo@listsize=12-base@listsize=12",
        "dpo@listsize=12-dpo@listsize=4", "perpo@listsize=12-perpo@listsize=4",
    ]  # fmt: skip
    assert summary["intervals"]["perpo@listsize=12-perpo@listsize=4"]["grounding/miou"] == pytest.approx([0.1, 0.1])
    text = (tmp_path / "ablation.md").read_text()
    assert text.startswith("# Ablation over listsize, measured")
    assert "| `perpo@listsize=12-perpo@listsize=4` | grounding/miou | +0.100 | [+0.100, +0.100] | A > B |" in text
    assert "best-of-N acc@0.5 (oracle)" in text
    assert "| claim |" not in text  # the demonstration's claim rows do not apply to an ablation
    with pytest.raises(ValueError, match="no config value 'margin.gamma'"):
        build_demonstration([tmp_path], by="margin.gamma")
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--by", "listsize", "--readme", "README.md"])
