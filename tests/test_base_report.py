"""perpo.reporting.base_report: the base's warm start, its tasks and whether it uses the image."""

import json

import pytest

from perpo.reporting.base_report import base_markdown, build_base_report, main


def _eval(folder, task, metrics, checkpoint):
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({"task": task, "num_records": 1000, "checkpoint": str(checkpoint), "metrics": metrics}))


def test_report_of_a_fabricated_base(tmp_path):
    base = tmp_path / "assets" / "base"
    base.mkdir(parents=True)
    record = {"steps": 6000, "seconds": 1200.0, "seed": 0, "task": "grounding", "mix": ["counting", "existence"],
              "train_records": 30000, "monitor": "val/acc@0.5", "val_history": [[500, 0.1], [1000, 0.3], [1500, 0.29]],
              "stopped": "plateau"}  # fmt: skip
    (base / "warmstart.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    _eval(out / "existence", "existence", {"accuracy": 0.7, "yes_rate": 0.55, "nll_true_images": 0.5, "nll_shuffled_images": 0.5}, base)
    _eval(out / "grounding", "grounding", {"acc@0.5": 0.3, "miou": 0.35, "nll_true_images": 0.3, "nll_shuffled_images": 0.4,
                                           "best_of_n_acc@0.5": 0.6, "best_of_n_size": 8.0}, base)  # fmt: skip
    report = build_base_report(out, seconds=1300, commands=["bash sweeps/base.sh"])
    assert list(report["tasks"]) == ["grounding", "existence"]  # the task order, not the folder order
    assert report["tasks"]["grounding"]["uses_image"] is True  # 0.3 < 0.4: 25% lower with its own image
    assert report["tasks"]["existence"]["uses_image"] is False  # the same NLL with shuffled images
    text = base_markdown(report)
    assert "6000 steps in 20.0 min, stopped by **plateau**" in text
    assert "| step | 500 | 1000 | 1500 |" in text and "| value | 0.100 | 0.300 | 0.290 |" in text
    assert "| existence | 1000 | accuracy 0.700, yes_rate 0.550 | 0.500 / 0.500 | **no** |" in text
    assert "greedy acc@0.5 0.300 vs best-of-8 acc@0.5 0.600" in text
    main([str(out), "--out", str(tmp_path / "base.md"), "--seconds", "1300"])
    assert json.loads((tmp_path / "base.json").read_text())["wall_seconds"] == 1300
    _eval(out / "again", "grounding", {"acc@0.5": 0.3}, base)
    with pytest.raises(ValueError, match="a second evaluation of grounding"):
        build_base_report(out)
    with pytest.raises(ValueError, match="no eval.json"):
        build_base_report(tmp_path / "empty")


def test_a_two_stage_warm_start_reads_earliest_first(tmp_path):
    """A second stage's warmstart.json keeps the first's as "previous": base.md shows both, in order."""
    first = {"steps": 15000, "seconds": 2700.0, "seed": 0, "task": "grounding", "mix": ["ocr"], "train_records": 25000,
             "monitor": "val/acc@0.5", "val_history": [[500, 0.1]], "stopped": "steps"}  # fmt: skip
    second = {**first, "steps": 3000, "seconds": 540.0, "lr": 4e-4, "val_history": [[500, 0.33]], "stopped": "plateau",
              "init": "outputs/cache/sft_base/x", "previous": first}  # fmt: skip
    base = tmp_path / "base"
    base.mkdir()
    (base / "warmstart.json").write_text(json.dumps(second))
    _eval(tmp_path / "out" / "grounding", "grounding", {"acc@0.5": 0.3}, base)
    text = base_markdown(build_base_report(tmp_path / "out", seconds=3300))
    one = text.index("Warm start, stage 1 of 2: 15000 steps in 45.0 min, stopped by **steps**")
    two = text.index("Warm start, stage 2 of 2: 3000 steps at lr 0.0004 in 9.0 min, stopped by **plateau**")
    assert one < text.index("| value | 0.100 |") < two < text.index("| value | 0.330 |")
    assert "The whole script (warm start, copy, evaluations) took 55.0 min." in text
