"""perpo.reporting.report: mean and spread per (task, method) over results.json files, base counted once per seed;
the paper's tables (--paper) with the differences; the list-size figure (--figure)."""

import json
import sys
from pathlib import Path

import pytest

from perpo.reporting import report
from perpo.reporting.report import (
    collect,
    collect_runs,
    dataset_of,
    listsize_curves,
    paper_markdown,
    paper_table,
    render_listsize_figure,
    summarize,
)  # fmt: skip


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


# -- the paper's tables (--paper) -------------------------------------------------------------------

PAPER_CONF = Path(__file__).resolve().parents[1] / "conf" / "experiment" / "paper"
ROOT = "/work/repo"  # the runs' paths.root: model identities are made absolute against it


def _paper(table, model, method, **numbers):
    return {"id": f"{model}-{method}", "table": table, "model": model, "method": method, **numbers}


def _grounding_config(paper, out, *, hub="lmms-lab/RefCOCO", split="testA", warmstart=False, blank=False, model_path="llava-hf/llava-1.5-7b-hf"):
    return {
        "paper": paper, "listsize": 20, "paths": {"root": ROOT, "output_dir": out},
        "eval": {"split": "test", "blank_image": False}, "warmstart": {"enabled": warmstart},
        "model": {"path": model_path},
        "data": {"path": f"{ROOT}/data/perpo_release", "blank_image": blank,
                 "splits": {"train": "train", "test": {"split": split, "adapter": "refcoco", "path": hub}}},
    }  # fmt: skip


def _train_run(root, name, config, *, loss="perpo", seed=42, before=None, after=None, task="grounding"):
    run = root / name
    run.mkdir(parents=True)
    payload = {"task": task, "loss": loss, "seed": seed, "base": config["model"]["path"], "config": config}
    if before is not None:
        payload["before"] = before
    if after is not None:
        payload["after"] = after
    (run / "results.json").write_text(json.dumps(payload))
    return run


def _eval_run(root, name, config, metrics, checkpoint, *, blank=False):
    run = root / name
    run.mkdir(parents=True)
    payload = {"task": "grounding", "split": "test", "checkpoint": checkpoint, "blank_image": blank, "metrics": metrics, "config": config}
    (run / "eval.json").write_text(json.dumps(payload))
    return run


def _table_lines(markdown, model, method):
    """The ours / paper / Δ lines of one row, as lists of cells (after the label column)."""
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == [model, method]:
            rows = [cells] + [[c.strip() for c in lines[i + k].strip().strip("|").split("|")] for k in (1, 2)]
            assert [r[2].split(" ")[0] for r in rows] == ["ours", "paper", "Δ"], rows
            return {r[2].split(" ")[0]: r[3:] for r in rows}, rows[0][2]
    raise AssertionError(f"no row {model} / {method} in:\n{markdown}")


V15 = "LLaVA-v1.5-7B"


def test_paper_table_puts_ours_beside_the_paper_with_the_difference(tmp_path):
    perpo = _paper("grounding", V15, "PerPO", refcoco_val=63.8, refcoco_testA=70.6)
    out = f"{ROOT}/outputs/paper/perpo/run1"
    _train_run(tmp_path, "train", _grounding_config(perpo, out), after={"acc@0.5": 0.708}, before={"acc@0.5": 0.6})
    _eval_run(tmp_path, "eval-val", _grounding_config(perpo, out, split="val"), {"acc@0.5": 0.612}, "outputs/paper/perpo/run1/model")
    tables, skipped = paper_table(collect_runs([tmp_path]), PAPER_CONF)
    md = paper_markdown(tables, skipped)
    lines, label = _table_lines(md, V15, "PerPO")
    assert label == "ours"
    assert lines["ours"][:3] == ["61.2", "70.8", "-"]  # RefCOCO val, testA, testB (no run)
    assert lines["paper"][:3] == ["63.8", "70.6", "54.4"]  # the conf row's numbers
    assert lines["Δ"][:3] == ["-2.6", "+0.2", "-"]
    assert lines["ours"][3:] == ["-"] * 5 and lines["Δ"][3:] == ["-"] * 5
    # the base row: the training run's "before" (warm start off: the checkpoint itself)
    base, _ = _table_lines(md, V15, "base")
    assert base["ours"][1] == "60.0" and base["paper"][1] == "59.9" and base["Δ"][1] == "+0.1"
    # rows without runs: "-" for ours and Δ, the paper's numbers still shown
    sft, _ = _table_lines(md, V15, "SFT")
    assert sft["ours"] == ["-"] * 8 and sft["Δ"] == ["-"] * 8 and sft["paper"][0] == "59.4"
    ocr, _ = _table_lines(md, "LLaVA-Next-50k-7B", "PerPO")
    assert ocr["ours"] == ["-"] * 6 and ocr["paper"] == ["0.56", "0.56", "0.75", "0.46", "0.24", "0.36"]
    assert "| model | method | | RefCOCO val | RefCOCO testA | RefCOCO testB | RefCOCO+ val |" in md
    assert "| model | method | | EditDist | F1 | Prec | Rec | BLEU | METEOR |" in md


def test_same_model_and_split_counts_once_and_seeds_average(tmp_path):
    row = _paper("grounding", V15, "DPO", refcoco_testA=67.8)
    for seed, (acc, out) in enumerate([(0.70, f"{ROOT}/o/s1"), (0.66, f"{ROOT}/o/s2")], 1):
        _train_run(tmp_path, f"t{seed}", _grounding_config(row, out), loss="dpo", seed=seed, after={"acc@0.5": acc})
    # evaluate.py on the first seed's model, same split (RefCOCO testA): not a third value
    _eval_run(tmp_path, "e1", _grounding_config(row, f"{ROOT}/o/e1"), {"acc@0.5": 0.70}, "o/s1/model")
    tables, _ = paper_table(collect_runs([tmp_path]), conf_dir=None)
    (r,) = tables["grounding"]
    mean, std, n = r.cells["refcoco_testA"].stats()
    assert n == 2 and mean == pytest.approx(68.0) and std == pytest.approx(2.0)
    lines, label = _table_lines(paper_markdown(tables), V15, "DPO")
    assert label == "ours (n=2)"
    assert lines["ours"][1] == "68.0" and lines["paper"][1] == "67.8" and lines["Δ"][1] == "+0.2"


def test_paper_numbers_come_from_the_runs_config_without_conf(tmp_path):
    row = _paper("grounding", "MyVLM", "PerPO", row=1, refcocog_val=50.0)
    _eval_run(tmp_path, "e", _grounding_config(row, f"{ROOT}/o", hub="lmms-lab/RefCOCOg", split="val"), {"acc@0.5": 0.525}, "ckpt")
    tables, _ = paper_table(collect_runs([tmp_path]), conf_dir=tmp_path / "no-conf")
    lines, _ = _table_lines(paper_markdown(tables), "MyVLM", "PerPO")
    assert lines["ours"][6] == "52.5" and lines["paper"][6] == "50.0" and lines["Δ"][6] == "+2.5"  # RefCOCOg val
    assert "ocr" not in tables  # no OCR rows without conf or runs


def _ocr_run(tmp_path, name, after):
    row = _paper("ocr", "LLaVA-Next-25k-7B", "PerPO", edit_distance=0.58, f1=0.54, precision=0.73, recall=0.44, bleu=0.23, meteor=0.36)
    config = {"paper": row, "paths": {"root": ROOT, "output_dir": f"{ROOT}/{name}"}, "eval": {"split": "test"},
              "warmstart": {"enabled": False}, "model": {"path": "ckpt"}, "data": {"path": "pages", "splits": {"test": "test"}}}  # fmt: skip
    _train_run(tmp_path, name, config, task="ocr", after=after)


def test_ocr_table_columns_and_missing_meteor(tmp_path):
    after = {"edit_distance": 0.6, "f1": 0.5, "precision": 0.7, "recall": 0.45, "bleu": 0.2, "scored_rate": 1.0}
    _ocr_run(tmp_path, "t", after)
    tables, _ = paper_table(collect_runs([tmp_path]), PAPER_CONF)
    lines, _ = _table_lines(paper_markdown(tables), "LLaVA-Next-25k-7B", "PerPO")
    assert lines["ours"] == ["0.60", "0.50", "0.70", "0.45", "0.20", "-"]
    assert lines["Δ"] == ["+0.02", "-0.04", "-0.03", "+0.01", "-0.03", "-"]


def test_ocr_meteor_without_wordnet_is_marked_not_comparable(tmp_path):
    after = {"edit_distance": 0.6, "f1": 0.5, "precision": 0.7, "recall": 0.45, "bleu": 0.2, "meteor_nosyn": 0.3, "scored_rate": 1.0}
    _ocr_run(tmp_path, "t", after)
    tables, _ = paper_table(collect_runs([tmp_path]), PAPER_CONF)
    md = paper_markdown(tables)
    lines, _ = _table_lines(md, "LLaVA-Next-25k-7B", "PerPO")
    assert lines["ours"][5] == "0.30†" and lines["paper"][5] == "0.36" and lines["Δ"][5] == "n/c"
    assert lines["Δ"][:5] == ["+0.02", "-0.04", "-0.03", "+0.01", "-0.03"]  # the other columns: same definition
    # every column says whether it is computed as the paper computes it
    for header in ("EditDist", "F1", "Prec", "Rec", "BLEU", "METEOR"):
        assert f"- {header}: same definition as the paper (" in md
    assert "† where `meteor` is missing: meteor_nosyn" in md
    assert "- every column: same definition as the paper (" in md  # grounding's Acc@0.5


def test_ocr_results_from_before_the_nougat_definitions_are_not_comparable(tmp_path):
    # no scored_rate: written when edit_distance stripped the text and F1 counted repeated words
    _ocr_run(tmp_path, "old", {"edit_distance": 0.6, "f1": 0.5, "precision": 0.7, "recall": 0.45, "bleu": 0.2, "meteor": 0.3})
    tables, _ = paper_table(collect_runs([tmp_path]), PAPER_CONF)
    lines, _ = _table_lines(paper_markdown(tables), "LLaVA-Next-25k-7B", "PerPO")
    assert lines["ours"] == ["0.60†", "0.50†", "0.70†", "0.45†", "0.20†", "0.30†"]
    assert lines["Δ"] == ["n/c"] * 6


def test_ocr_meteor_with_wordnet_is_comparable(tmp_path):
    after = {"edit_distance": 0.6, "f1": 0.5, "precision": 0.7, "recall": 0.45, "bleu": 0.2, "meteor": 0.35, "meteor_nosyn": 0.3, "scored_rate": 1.0}
    _ocr_run(tmp_path, "t", after)
    tables, _ = paper_table(collect_runs([tmp_path]), PAPER_CONF)
    lines, _ = _table_lines(paper_markdown(tables), "LLaVA-Next-25k-7B", "PerPO")
    assert lines["ours"][5] == "0.35" and lines["Δ"][5] == "-0.01"


def test_runs_outside_the_tables_are_counted_not_shown(tmp_path):
    row = _paper("grounding", V15, "PerPO")
    _train_run(tmp_path, "blank", _grounding_config(row, f"{ROOT}/b", blank=True), after={"acc@0.5": 0.9})
    _eval_run(tmp_path, "blank-eval", _grounding_config(row, f"{ROOT}/c"), {"acc@0.5": 0.9}, "c", blank=True)
    _train_run(tmp_path, "nopaper", {"model": {"path": "x"}}, after={"acc@0.5": 0.9})
    _eval_run(tmp_path, "synthetic", {**_grounding_config(row, f"{ROOT}/d"), "data": {"splits": {}}}, {"acc@0.5": 0.9}, "d")
    tables, skipped = paper_table(collect_runs([tmp_path]), PAPER_CONF)
    assert sum(skipped.values()) == 4
    assert skipped["no paper block"] == 1 and skipped["evaluated on blank images"] == 1
    md = paper_markdown(tables, skipped)
    lines, _ = _table_lines(md, V15, "PerPO")
    assert lines["ours"] == ["-"] * 8
    assert "Not in the tables: " in md


@pytest.mark.parametrize(
    ("path", "name"),
    [("lmms-lab/RefCOCO", "RefCOCO"), ("lmms-lab/RefCOCOplus", "RefCOCO+"), ("lmms-lab/RefCOCOg", "RefCOCOg"),
     ("/data/refcoco+/val.parquet", "RefCOCO+"), ("/data/refcocog", "RefCOCOg"), ("/data/pages", None), (None, None)],
)  # fmt: skip
def test_dataset_of(path, name):
    assert dataset_of(path) == name


# -- the list-size figure (--figure) ----------------------------------------------------------------


def _listsize_runs(root):
    k = 0
    for seed in (1, 2):
        for n in (2, 4, 8):
            for loss, acc in (("perpo", 0.5 + 0.01 * n + 0.01 * seed), ("dpo", 0.45 + 0.005 * n)):
                k += 1
                _write_listsize(root, f"{k}", loss, seed, n, acc, best_of_n=0.5 + 0.02 * n)
        k += 1
        _write_listsize(root, f"{k}", "sft", seed, 8, 0.4 + 0.02 * seed)


def _write_listsize(root, name, loss, seed, n, acc, best_of_n=None):
    run = root / name
    run.mkdir(parents=True)
    after, before = {"acc@0.5": acc, "miou": acc / 2}, {"acc@0.5": 0.3}
    if best_of_n is not None and loss != "sft":  # eval.best_of_n=true: the base's oracle, in "before"
        before.update({"best_of_n_acc@0.5": best_of_n, "best_of_n_reward": best_of_n / 2, "best_of_n": float(n)})
    payload = {"task": "grounding", "loss": loss, "seed": seed, "base": f"base-{seed}", "after": after,
               "before": before, "config": {"listsize": n, "margin": {"gamma": 0.5}}}  # fmt: skip
    (run / "results.json").write_text(json.dumps(payload))


def test_listsize_curves(tmp_path):
    _listsize_runs(tmp_path)
    curves = listsize_curves(collect(tmp_path))["grounding"]
    assert list(curves) == ["best-of-N (oracle)", "PerPO", "DPO", "SFT"]
    assert curves["PerPO"][4] == (pytest.approx(0.555), pytest.approx(0.005), 2)
    assert curves["DPO"][8][0] == pytest.approx(0.49)
    assert curves["SFT"] == {8: (pytest.approx(0.43), pytest.approx(0.01), 2)}
    # the oracle depends on the base's samples: once per (seed, N), not once per loss
    assert curves["best-of-N (oracle)"][2] == (pytest.approx(0.54), 0.0, 2)


def test_listsize_without_best_of_n_has_no_oracle_line(tmp_path):
    _write_listsize(tmp_path, "a", "perpo", 1, 2, 0.5)
    assert list(listsize_curves(collect(tmp_path))["grounding"]) == ["PerPO"]


def test_listsize_figure_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    _listsize_runs(tmp_path / "runs")
    out = tmp_path / "fig" / "listsize.png"
    assert render_listsize_figure(listsize_curves(collect(tmp_path / "runs")), out, with_paper=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["listsize.png"]  # no temporary file left


def test_without_matplotlib_one_line_and_the_markdown_still_written(tmp_path, monkeypatch, capsys):
    _listsize_runs(tmp_path / "runs")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    md = tmp_path / "report.md"
    report.main([str(tmp_path / "runs"), "--figure", str(tmp_path / "f.png"), "--out", str(md)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "matplotlib is not installed" in err[0]
    assert not (tmp_path / "f.png").exists()
    assert "| PerPO |" in md.read_text() and "N=20" not in md.read_text() and "N=8" in md.read_text()


# -- the command line ----------------------------------------------------------------------------


def test_cli_paper_mode_writes_the_markdown_atomically(tmp_path, capsys):
    row = _paper("grounding", V15, "PerPO", refcoco_val=63.8)
    _eval_run(tmp_path / "runs", "e", _grounding_config(row, f"{ROOT}/o", split="val"), {"acc@0.5": 0.612}, "m")
    out = tmp_path / "md" / "paper.md"
    report.main([str(tmp_path / "runs"), "--paper", "--out", str(out)])
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    assert [p.name for p in out.parent.iterdir()] == ["paper.md"]
    lines, _ = _table_lines(printed, V15, "PerPO")
    assert lines["Δ"][0] == "-2.6"


def test_cli_summary_by_config_key(tmp_path, capsys):
    for i, (gamma, after) in enumerate([(0.0, 0.4), (0.5, 0.6), (0.5, 0.7)]):
        run = tmp_path / str(i)
        run.mkdir()
        payload = {"task": "grounding", "loss": "perpo", "seed": i, "before": {"acc@0.5": 0.3},
                   "after": {"acc@0.5": after}, "config": {"margin": {"gamma": gamma}}}  # fmt: skip
        (run / "results.json").write_text(json.dumps(payload))
    summary = summarize(collect(tmp_path), by=["margin.gamma"])
    assert summary[("grounding", "perpo [margin.gamma=0.5]")]["acc@0.5"] == pytest.approx((0.65, 0.05, 2))
    assert summary[("grounding", "perpo [margin.gamma=0.0]")]["acc@0.5"][2] == 1
    assert summary[("grounding", "base")]["acc@0.5"][2] == 3
    out = tmp_path / "summary.md"
    report.main([str(tmp_path), "--by", "margin.gamma", "--out", str(out)])
    assert "| perpo [margin.gamma=0.5] | 0.6500 ± 0.0500 (2) |" in out.read_text()


def test_cli_refuses_a_missing_folder(tmp_path):
    with pytest.raises(SystemExit) as info:
        report.main([str(tmp_path / "missing")])
    assert info.value.code == 2


def test_the_runs_paper_block_wins_over_conf(tmp_path):
    row = _paper("grounding", V15, "PerPO", row=4, refcoco_val=60.0)  # e.g. numbers corrected in the run's config
    _eval_run(tmp_path, "e", _grounding_config(row, f"{ROOT}/o", split="val"), {"acc@0.5": 0.612}, "m")
    tables, _ = paper_table(collect_runs([tmp_path]), PAPER_CONF)
    lines, _ = _table_lines(paper_markdown(tables), V15, "PerPO")
    assert lines["paper"][:2] == ["60.0", "70.6"] and lines["Δ"][0] == "+1.2"  # conf fills what the run lacks
    assert [r.method for r in tables["grounding"][:4]] == ["base", "SFT", "DPO", "PerPO"]
