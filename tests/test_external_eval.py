"""perpo's predictions scored by the field's tools give perpo's numbers (docs/EXTERNAL_EVAL.md).

The lmms-eval check runs lmms-eval's OWN RefCOCO scoring -- ``refcoco_bbox_rec_process_result``
(which parses the text with ``parse_float_sequence_within``) and
``refcoco_bbox_rec_aggregation_result`` from lmms_eval/tasks/refcoco/utils_rec.py -- whenever
lmms-eval is importable here or ``$PERPO_LMMS_EVAL_SRC`` points at its source
(:func:`perpo.reporting.external.lmms_eval_rec` loads that file by path). Where it is not (the
project's venv: ``pip install lmms-eval`` would replace torch / transformers), the same
functions come from perpo's copy of the published definition, EvolvingLMMs-Lab/lmms-eval
lmms_eval/tasks/refcoco/utils_rec.py at commit 75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3
(``LMMS_EVAL_UPSTREAM``); ``test_copy_matches_installed_lmms_eval`` compares the two where both
exist. The VLMEvalKit check copies ``RefCOCODataset._parse_prediction`` / ``_to_absolute`` /
``_compute_iou`` (open-compass/VLMEvalKit vlmeval/dataset/refcoco.py at commit
e8e78f05f3080fe28154f2130321f17951c3be94) unless vlmeval is importable.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from perpo.boxes import get_box_format, write_box
from perpo.evaluation.loop import prediction_row
from perpo.evaluation.metrics import TaskMetrics
from perpo.prompting import ChatFamily, TaskSpec
from perpo.reporting import external
from perpo.reporting.external import (
    box_text,
    lmms_eval_doc_ids,
    lmms_eval_rec,
    read_predictions,
    score_lmms_eval_refcoco,
    to_lmms_eval_log,
    to_vlmeval_rows,
    write_vlmeval_table,
)

# Non-square images (landscape and portrait), targets in the original frame, and answers:
# a shift (as a fraction of the box size) of the target the model "wrote", or None (no box),
# or "swap" (corners swapped: perpo reorders them).
CASES = [
    (640, 480, [0.10, 0.20, 0.40, 0.70], (0.02, 0.01)),  # hit
    (480, 640, [0.30, 0.10, 0.90, 0.50], (0.45, 0.30)),  # miss
    (500, 333, [0.05, 0.05, 0.50, 0.95], (0.10, -0.05)),  # hit
    (333, 500, [0.55, 0.40, 0.95, 0.80], (0.60, 0.00)),  # miss
    (612, 408, [0.20, 0.30, 0.60, 0.60], None),  # no box
    (427, 640, [0.25, 0.25, 0.75, 0.60], "swap"),  # hit after reordering
    (640, 360, [0.40, 0.10, 0.70, 0.90], (0.25, 0.20)),  # near the threshold
]

FAMILIES = {
    # family: (box format, frame, extra record fields)
    "llava15": ("norm2", "padded_square", {}),
    "qwen2_5_vl": ("qwen25vl", "resized", {"resize": 28}),
    "qwen2_vl": ("qwen2vl", "resized", {}),
    "qwen3_vl": ("int1000", "resized", {}),
    "llava_next": ("norm2", "original", {}),
}


def _records_and_answers(family: str):
    fmt_name, frame, extra = FAMILIES[family]
    fmt = get_box_format(fmt_name)
    records, answers = [], []
    for i, (w, h, target, shift) in enumerate(CASES):
        record = {"id": f"{1000 + i}-0", "task": "grounding", "prompt": "x", "target": target, "width": w, "height": h}
        if "resize" in extra:  # Qwen2.5-VL: pixels of the smart-resized image (multiples of 28)
            record["box_width"], record["box_height"] = 28 * round(w / 28), 28 * round(h / 28)
        if shift is None:
            text = "I cannot find it."
        else:
            bw, bh = target[2] - target[0], target[3] - target[1]
            dx, dy = (0.0, 0.0) if shift == "swap" else (shift[0] * bw, shift[1] * bh)
            box = [target[0] + dx, target[1] + dy, target[2] + dx, target[3] + dy]
            text = write_box(box, record, fmt, frame)
            if shift == "swap":  # the model wrote the corners the other way round
                spans = [m.span() for m in re.finditer(r"(?<![\w.])\d+(?:\.\d+)?", text)][:4]
                (a0, a1), (b0, b1) = spans[0], spans[2]
                text = text[:a0] + text[b0:b1] + text[a1:b0] + text[a0:a1] + text[b1:]
        records.append(record)
        answers.append(f"The box is {text}.")
    chat = ChatFamily(None, fmt_name, box_frame=frame)  # answer conventions only: no processor needed
    rows = [prediction_row(r, t, TaskSpec("grounding", "{prompt}", 32), chat) for r, t in zip(records, answers)]
    return records, answers, rows


def _perpo_metrics(family: str, records, answers) -> dict:
    fmt_name, frame, _ = FAMILIES[family]
    metrics = TaskMetrics("grounding", box_format=fmt_name, box_frame=frame, sync_on_compute=False)
    metrics.update(answers, records)
    return metrics.compute()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lmms_eval_refcoco_scoring_gives_perpo_acc(family):
    records, answers, rows = _records_and_answers(family)
    ours = _perpo_metrics(family, records, answers)
    assert 0.0 < ours["acc@0.5"] < 1.0  # hits and misses: the comparison is not trivial
    truth = {r["id"]: r["target"] for r in records}
    theirs = score_lmms_eval_refcoco(rows, truth)
    assert theirs["refcoco_ACC@0.5"] == ours["acc@0.5"], theirs["scorer"]
    assert theirs["refcoco_IoU"] == pytest.approx(ours["miou"], abs=1e-12)
    assert theirs["num_docs"] == len(records)


def test_the_raw_answers_would_not_score_right():
    """Why the converter writes `box` and never the raw text: LLaVA-1.5's padded-square fractions
    on non-square images, Qwen2.5-VL's pixels and Qwen3-VL's 0-1000 integers all score wrongly in
    lmms-eval (which reads [a, b, c, d] as fractions of the unpadded image)."""
    rec = lmms_eval_rec()
    for family in ("llava15", "qwen2_5_vl", "qwen3_vl"):
        records, answers, _ = _records_and_answers(family)
        raw = [
            rec.process_result({"question_id": r["id"], "answer": "", "bbox": r["target"]}, [t])["refcoco_IoU"]
            for r, t in zip(records, answers)
        ]
        assert rec.aggregation(raw, "IoU") < _perpo_metrics(family, records, answers)["miou"] - 0.05, family


def test_copy_matches_installed_lmms_eval():
    """perpo's copy of lmms-eval's functions scores as lmms-eval does (skipped without lmms-eval)."""
    try:
        real = lmms_eval_rec(allow_copy=False)
    except ModuleNotFoundError:
        pytest.skip("lmms-eval not installed here (set PERPO_LMMS_EVAL_SRC to its source to run this)")
    copy = external.LmmsEvalRec(external._upstream_process_result, external._upstream_aggregation_result, "copy")
    for family in FAMILIES:
        records, _, rows = _records_and_answers(family)
        truth = {r["id"]: r["target"] for r in records}
        a, b = score_lmms_eval_refcoco(rows, truth, real), score_lmms_eval_refcoco(rows, truth, copy)
        assert {k: v for k, v in a.items() if k != "scorer"} == {k: v for k, v in b.items() if k != "scorer"}


def test_box_text_reads_back_exactly():
    rec = lmms_eval_rec()
    for box in ([0.1, 0.2, 0.3, 0.4], [1e-7, 0.0, 1.0, 0.3333333333333333], [0.123456789012345, 0.5, 0.75, 1.0]):
        text = box_text(box)
        assert "e" not in text.lower()
        pred = rec.process_result({"question_id": 0, "answer": "", "bbox": box}, [text])["refcoco_IoU"]["pred"]
        assert pred == box
    assert box_text(None) == ""


def test_lmms_eval_from_log_file(tmp_path):
    """The log has what lmms-eval's from_log model reads (args.model/model_args/limit,
    model_configs.task, logs[].doc_id, logs[].resps[0][0]); doc ids follow the lmms-lab parquet
    rows exploded one per expression, whatever order the predictions come in."""
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    table = pa.table({"question_id": ["7", "3", "9"], "answer": [["a", "b"], ["c"], ["d", "e"]],
                      "bbox": [[10.0, 20.0, 100.0, 50.0], [0.0, 0.0, 320.0, 240.0], [5.0, 5.0, 50.0, 400.0]]})  # fmt: skip
    pq.write_table(table, tmp_path / "val-00000-of-00001.parquet")
    ids = lmms_eval_doc_ids([tmp_path])
    assert ids == {"7-0": 0, "7-1": 1, "3-0": 2, "9-0": 3, "9-1": 4}

    size = {"7": (640, 480), "3": (640, 480), "9": (300, 500)}
    preds = []
    for pid in ["9-1", "3-0", "7-0", "9-0", "7-1"]:
        x, y, bw, bh = table.column("bbox")[["7", "3", "9"].index(pid.split("-")[0])].as_py()
        w, h = size[pid.split("-")[0]]
        box = [x / w, y / h, (x + bw) / w, (y + bh) / h] if pid != "7-1" else None
        preds.append({"id": pid, "prediction": "raw", "box": box, "width": w, "height": h})
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))

    log = to_lmms_eval_log(read_predictions(tmp_path / "predictions.jsonl"), "refcoco_bbox_rec_val", ids)
    assert log["args"] == {"model": "perpo", "model_args": "", "limit": None}
    assert log["model_configs"] == {"task": "refcoco_bbox_rec_val"}
    replay = {entry["doc_id"]: entry["resps"][0][0] for entry in log["logs"]}  # as from_log reads it
    assert sorted(replay) == [0, 1, 2, 3, 4] and replay[1] == ""

    assert external.main(["lmms-eval", str(tmp_path / "predictions.jsonl"), "--task", "refcoco_bbox_rec_val",
                          "--out", str(tmp_path / "logs"), "--docs", str(tmp_path)]) == 0  # fmt: skip
    assert json.loads((tmp_path / "logs" / "refcoco_bbox_rec_val.json").read_text())["logs"] == log["logs"]

    # score: ground truth read from the parquet the way lmms-eval's preprocess does; 4 of 5 exact
    out = tmp_path / "lmms_metrics.json"
    assert external.main(["score", str(tmp_path / "predictions.jsonl"), "--docs", str(tmp_path), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["refcoco_ACC@0.5"] == pytest.approx(0.8) and metrics["num_docs"] == 5


# -- VLMEvalKit ------------------------------------------------------------------------------------


def _vlmeval_scorer():
    """(parse, to_absolute, iou): VLMEvalKit's RefCOCODataset static methods, or their copy."""
    try:
        from vlmeval.dataset.refcoco import RefCOCODataset as D  # type: ignore

        return D._parse_prediction, D._to_absolute, D._compute_iou
    except ImportError:
        pass  # not installed: the copy below

    def parse(text):
        num = r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?"
        sep = r"(?:\s*,\s*|\s+)"
        for m in re.finditer(rf"\[\s*({num}){sep}({num}){sep}({num}){sep}({num})\s*\]", text):
            coords = np.array([float(m.group(i)) for i in range(1, 5)], dtype=float)
            if not np.isnan(coords).any():
                return coords
        found = re.findall(num, text)
        return None if len(found) < 4 else np.array([float(x) for x in found[:4]], dtype=float)

    def to_absolute(c, w, h):
        c = c.astype(float)[:4]
        m = float(np.max(np.abs(c)))
        if m <= 1.5:
            c[0::2] *= w
            c[1::2] *= h
        elif m <= 1000:
            c[0::2] = c[0::2] / 1000.0 * w
            c[1::2] = c[1::2] / 1000.0 * h
        c[0], c[2] = np.clip(c[0], 0, w), np.clip(c[2], 0, w)
        c[1], c[3] = np.clip(c[1], 0, h), np.clip(c[3], 0, h)
        if c[2] < c[0]:
            c[0], c[2] = c[2], c[0]
        if c[3] < c[1]:
            c[1], c[3] = c[3], c[1]
        return c

    def iou(a, b):
        xl, yt, xr, yb = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
        if xr <= xl or yb <= yt:
            return 0.0
        inter = (xr - xl) * (yb - yt)
        union = max(a[2] - a[0], 0) * max(a[3] - a[1], 0) + max(b[2] - b[0], 0) * max(b[3] - b[1], 0) - inter
        return 0.0 if union <= 0 else inter / union

    return parse, to_absolute, iou


@pytest.mark.parametrize("family", ["llava15", "qwen2_5_vl"])
def test_vlmeval_refcoco_precision_gives_perpo_acc(family, tmp_path):
    records, answers, rows = _records_and_answers(family)
    table = to_vlmeval_rows(rows, {r["id"]: i for i, r in enumerate(records)})
    path = write_vlmeval_table(table, tmp_path / "perpo_RefCOCO.tsv")
    import pandas as pd

    read = pd.read_csv(path, sep="\t", keep_default_na=False)  # what VLMEvalKit's load does for .tsv
    assert list(read["index"]) == list(range(len(records)))
    parse, to_absolute, iou = _vlmeval_scorer()
    hits = []
    for record, text in zip(records, read["prediction"]):
        w, h = record["width"], record["height"]
        gt = np.array(record["target"], dtype=float) * [w, h, w, h]
        coords = parse(str(text))
        pred = None if coords is None else to_absolute(coords, w, h)
        hits.append(0.0 if pred is None else float(iou(pred, gt) >= 0.5))
    assert sum(hits) / len(hits) == _perpo_metrics(family, records, answers)["acc@0.5"]
    assert not math.isnan(sum(hits))
