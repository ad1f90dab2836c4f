"""evaluate.py's predictions in the field's tools: lmms-eval and VLMEvalKit (docs/EXTERNAL_EVAL.md).

    python -m perpo.reporting.external lmms-eval RUN/predictions.jsonl --task refcoco_bbox_rec_val --out logs/perpo
    python -m perpo.reporting.external score RUN/predictions.jsonl --docs data/refcoco/val-*.parquet
    python -m perpo.reporting.external vlmeval RUN/predictions.jsonl --out perpo_RefCOCO.tsv [--index-map map.tsv]

Every grounding line of ``predictions.jsonl`` carries ``box``: the model's answer read in the
family's box format and frame (``model.box_format``, ``model.box_frame``) and converted to
normalized ``xyxy`` of the ORIGINAL image (:func:`perpo.evaluation.loop.prediction_row`). That is
the convention both tools score, so the converters below write ``box`` -- never the raw
answer -- as the text ``[x1, y1, x2, y2]`` (plain decimals, full float precision, so the tool
parses back the very floats perpo scored):

- ``lmms-eval`` (``refcoco*_bbox_rec_*``; lmms_eval/tasks/refcoco/utils_rec.py
  ``parse_float_sequence_within``): the first ``[a, b, c, d]`` of four plain decimals in the
  text, read as fractions of the unpadded image; no clipping, no corner reordering; no match ->
  ``[0, 0, 0, 0]`` (IoU 0). :func:`to_lmms_eval_log` writes the log that lmms-eval's own
  ``--model from_log`` replays, so lmms-eval loads the ground truth and scores with its own code.
- ``VLMEvalKit`` (``RefCOCO``; vlmeval/dataset/refcoco.py ``RefCOCODataset._to_absolute``)
  guesses the scale from the numbers: max |v| <= 1.5 -> fractions, <= 1000 -> 0-1000, else
  pixels. Normalized fractions are always read as fractions. :func:`to_vlmeval_rows` writes its
  prediction table (``index``, ``prediction``); its ``index`` is VLMEvalKit's own row index of
  RefCOCO.tsv, which perpo cannot know: pass ``index_map`` (perpo id -> index).

An answer without a box is written as ``""``: both tools score it IoU 0, as perpo does.

``score`` runs lmms-eval's RefCOCO scoring functions (``refcoco_bbox_rec_process_result`` and
``refcoco_bbox_rec_aggregation_result``) on the converted predictions, with the ground truth
read from the lmms-lab parquet files the way lmms-eval's ``refcoco_bbox_rec_preprocess_dataset``
reads it. The functions come from an installed lmms-eval (its utils_rec.py is loaded by path, so
lmms-eval's heavy imports are not needed), from ``$PERPO_LMMS_EVAL_SRC`` (an lmms-eval source or
site-packages folder), or else from :data:`LMMS_EVAL_UPSTREAM`'s copy below (``source`` says
which).
"""

from __future__ import annotations

import argparse
import csv
import decimal
import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perpo.atomic import write_json_atomic, write_text_atomic

__all__ = [
    "LMMS_EVAL_UPSTREAM",
    "LMMS_EVAL_METRICS",
    "read_predictions",
    "box_text",
    "to_lmms_eval_log",
    "lmms_eval_doc_ids",
    "lmms_eval_ground_truth",
    "LmmsEvalRec",
    "lmms_eval_rec",
    "score_lmms_eval_refcoco",
    "to_vlmeval_rows",
    "write_vlmeval_table",
    "main",
]

# The upstream code the fallback copy below follows (read at this commit).
LMMS_EVAL_UPSTREAM = (
    "EvolvingLMMs-Lab/lmms-eval lmms_eval/tasks/refcoco/utils_rec.py "
    "@ 75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3"
)
LMMS_EVAL_METRICS = ("IoU", "ACC@0.1", "ACC@0.3", "ACC@0.5", "ACC@0.7", "ACC@0.9", "Center_ACC")


# -- predictions ---------------------------------------------------------------------------------


def read_predictions(path: str | Path) -> list[dict]:
    """The lines of an evaluate.py ``predictions.jsonl``."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if rows and "box" not in rows[0]:
        raise ValueError(f"{path}: not grounding predictions (no `box` field); only RefCOCO-style grounding converts")
    return rows


def _plain(value: float) -> str:
    """A float as a plain decimal that reads back as the same float (no exponent: lmms-eval's
    regex takes ``-?\\d+(\\.\\d+)?`` only)."""
    text = format(decimal.Decimal(repr(float(value))), "f")
    return text if "." in text else text + ".0"


def box_text(box: Sequence[float] | None) -> str:
    """``[x1, y1, x2, y2]`` of an original-frame normalized box, or ``""`` for no box."""
    if box is None:
        return ""
    return "[" + ", ".join(_plain(v) for v in box) + "]"


# -- lmms-eval -----------------------------------------------------------------------------------


def to_lmms_eval_log(
    predictions: Sequence[Mapping], task: str, doc_ids: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """The JSON log lmms-eval's ``from_log`` model replays (lmms_eval/models/simple/from_log.py:
    ``args`` {model, model_args, limit}, ``model_configs.task``, ``logs`` [{doc_id, resps}],
    ``time`` "%m%d_%H%M"): ``resps[0][0]`` is the converted box text.

    ``doc_ids`` maps perpo ids to lmms-eval's doc ids (:func:`lmms_eval_doc_ids`); without it the
    predictions' order is taken as the doc order (true when the whole split was evaluated and the
    adapter skipped no row)."""
    logs = []
    for i, row in enumerate(predictions):
        if doc_ids is None:
            doc_id = i
        elif row["id"] in doc_ids:
            doc_id = doc_ids[row["id"]]
        else:
            raise KeyError(f"prediction {row['id']!r} is not in the lmms-eval docs given")
        logs.append({"doc_id": doc_id, "resps": [[box_text(row.get("box"))]], "perpo_id": row["id"],
                     "perpo_prediction": row.get("prediction")})  # fmt: skip
    return {
        "args": {"model": "perpo", "model_args": "", "limit": None},
        "model_configs": {"task": task},
        "time": time.strftime("%m%d_%H%M"),
        "logs": logs,
    }


def _parquet_columns(paths: Iterable[str | Path], columns: Sequence[str]) -> list[dict]:
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for path in _expand(paths):
        rows += pq.read_table(path, columns=list(columns)).to_pylist()
    return rows


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(p.glob("*.parquet")) if p.is_dir() else [p]
    if not out:
        raise FileNotFoundError("no parquet file given (--docs)")
    return out


def lmms_eval_doc_ids(docs: Iterable[str | Path]) -> dict[str, int]:
    """perpo id -> lmms-eval doc id for the lmms-lab RefCOCO parquet files of one split (in
    lmms-eval's order: files sorted, rows in order, one doc per referring expression, as
    ``refcoco_bbox_rec_preprocess_dataset`` explodes them). perpo's refcoco adapter names a
    record ``f"{question_id}-{k}"`` (k: the expression's position)."""
    ids: dict[str, int] = {}
    for row in _parquet_columns(docs, ["question_id", "answer"]):
        answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
        for k in range(len(answers)):
            ids[f"{row['question_id']}-{k}"] = len(ids)
    return ids


def lmms_eval_ground_truth(docs: Iterable[str | Path], sizes: Mapping[str, tuple[int, int]]) -> dict[str, list[float]]:
    """perpo id -> the ground-truth box as lmms-eval computes it: COCO ``[x, y, w, h]`` pixels
    divided by the image's width / height into ``[x1, y1, x2, y2]``. ``sizes``: question id ->
    (width, height) (the predictions carry them; lmms-eval reads them from the image)."""
    truth: dict[str, list[float]] = {}
    for row in _parquet_columns(docs, ["question_id", "answer", "bbox"]):
        qid = str(row["question_id"])
        if qid not in sizes:
            continue
        w, h = sizes[qid]
        x, y, bw, bh = row["bbox"]
        box = [x / w, y / h, (x + bw) / w, (y + bh) / h]
        answers = row["answer"] if isinstance(row["answer"], list) else [row["answer"]]
        for k in range(len(answers)):
            truth[f"{qid}-{k}"] = box
    return truth


# The fallback: lmms-eval's functions as published (LMMS_EVAL_UPSTREAM), same names, same
# arithmetic. Used only where no lmms-eval is found.


def _upstream_parse_float_sequence_within(input_str):
    pattern = r"\[\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?)\s*\]"
    match = re.search(pattern, input_str)
    if match:
        return [float(match.group(i)) for i in range(1, 5)]
    return [0, 0, 0, 0]


def _upstream_process_result(doc, result):
    pred = result[0] if len(result) > 0 else ""
    pred = _upstream_parse_float_sequence_within(pred)
    data_dict = {"answer": doc["answer"], "pred": pred, "ann_id": doc["question_id"], "bbox": doc["bbox"]}
    return {f"refcoco_{metric}": data_dict for metric in LMMS_EVAL_METRICS}


def _upstream_compute_iou(box1, box2):
    x_left, y_top = max(box1[0], box2[0]), max(box1[1], box2[1])
    x_right, y_bottom = min(box1[2], box2[2]), min(box1[3], box2[3])
    intersection_area = max(0, x_right - x_left) * max(0, y_bottom - y_top)
    box1_area = (box1[2] - box1[0]) * (box1[3] - box1[1])
    box2_area = (box2[2] - box2[0]) * (box2[3] - box2[1])
    union_area = box1_area + box2_area - intersection_area
    return intersection_area / union_area


def _upstream_center(box1, box2):
    cx, cy = (box2[0] + box2[2]) / 2, (box2[1] + box2[3]) / 2
    return box1[0] <= cx <= box1[2] and box1[1] <= cy <= box1[3]


def _upstream_aggregation_result(results, metric):
    scorers = {"IoU": _upstream_compute_iou, "Center_ACC": _upstream_center}
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        scorers[f"ACC@{t}"] = lambda x, y, t=t: _upstream_compute_iou(x, y) >= t
    scores = [scorers[metric](r["bbox"], r["pred"]) for r in results]
    return sum(scores) / len(scores) if scores else float("nan")


@dataclass(frozen=True)
class LmmsEvalRec:
    """lmms-eval's RefCOCO bbox_rec scoring: ``process_result(doc, [text]) -> {metric: data}``,
    ``aggregation(results, metric) -> float``; ``source``: the file they came from, or the copy."""

    process_result: Callable
    aggregation: Callable
    source: str


def _utils_rec_file() -> Path | None:
    candidates = []
    env = os.environ.get("PERPO_LMMS_EVAL_SRC")
    if env:
        root = Path(env)
        candidates += [root / "tasks/refcoco/utils_rec.py", root / "lmms_eval/tasks/refcoco/utils_rec.py"]
    spec = importlib.util.find_spec("lmms_eval")  # finds the package without running its __init__
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "tasks/refcoco/utils_rec.py" for p in spec.submodule_search_locations]
    return next((p for p in candidates if p.is_file()), None)


def lmms_eval_rec(*, allow_copy: bool = True) -> LmmsEvalRec:
    """lmms-eval's own functions when lmms-eval is found (loaded from the file by path: it
    imports only ``datasets``), else the copy of :data:`LMMS_EVAL_UPSTREAM` (``allow_copy``)."""
    path = _utils_rec_file()
    if path is not None:
        spec = importlib.util.spec_from_file_location("_lmms_eval_refcoco_utils_rec", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return LmmsEvalRec(module.refcoco_bbox_rec_process_result, module.refcoco_bbox_rec_aggregation_result, str(path))
    if not allow_copy:
        raise ModuleNotFoundError("lmms-eval not found (pip install lmms-eval, or set PERPO_LMMS_EVAL_SRC)")
    return LmmsEvalRec(_upstream_process_result, _upstream_aggregation_result, f"copy of {LMMS_EVAL_UPSTREAM}")


def score_lmms_eval_refcoco(
    predictions: Sequence[Mapping], truth: Mapping[str, Sequence[float]], rec: LmmsEvalRec | None = None
) -> dict[str, Any]:
    """lmms-eval's RefCOCO metrics of the converted predictions: each prediction's box text goes
    through lmms-eval's ``refcoco_bbox_rec_process_result`` against ``truth[id]`` (normalized
    xyxy of the original image, as lmms-eval's docs hold it), then each metric through its
    ``refcoco_bbox_rec_aggregation_result``. Keys ``refcoco_<metric>``, plus ``num_docs`` and
    ``scorer`` (where the functions came from)."""
    rec = rec or lmms_eval_rec()
    results: dict[str, list] = {f"refcoco_{m}": [] for m in LMMS_EVAL_METRICS}
    for row in predictions:
        doc = {"question_id": row["id"], "answer": "", "bbox": list(truth[row["id"]])}
        for key, value in rec.process_result(doc, [box_text(row.get("box"))]).items():
            results[key].append(value)
    out: dict[str, Any] = {key: float(rec.aggregation(values, key[len("refcoco_"):])) for key, values in results.items()}
    return {**out, "num_docs": len(predictions), "scorer": rec.source}


# -- VLMEvalKit ----------------------------------------------------------------------------------


def to_vlmeval_rows(predictions: Sequence[Mapping], index_map: Mapping[str, Any] | None = None) -> list[dict]:
    """VLMEvalKit's prediction table for ``RefCOCODataset.evaluate``: ``index`` (VLMEvalKit's
    row index; the perpo id where ``index_map`` has none), ``prediction`` (the box text), and
    for reading: ``perpo_id``, ``perpo_prediction`` (the raw answer), ``width``, ``height``."""
    index_map = index_map or {}
    return [
        {"index": index_map.get(row["id"], row["id"]), "prediction": box_text(row.get("box")),
         "perpo_id": row["id"], "perpo_prediction": row.get("prediction", ""),
         "width": row.get("width"), "height": row.get("height")}
        for row in predictions
    ]  # fmt: skip


def write_vlmeval_table(rows: Sequence[Mapping], path: str | Path) -> Path:
    """``.tsv`` (VLMEvalKit's ``load`` reads it; ``PRED_FORMAT=tsv``) or ``.xlsx`` (its default;
    needs openpyxl), written atomically."""
    path = Path(path)
    columns = list(rows[0]) if rows else ["index", "prediction"]
    if path.suffix == ".xlsx":
        import pandas as pd

        tmp = path.with_name(path.name + ".tmp.xlsx")
        pd.DataFrame(list(rows), columns=columns).to_excel(tmp, index=False)
        os.replace(tmp, path)
        return path
    if path.suffix != ".tsv":
        raise ValueError(f"{path}: write .tsv or .xlsx")
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())
    return path


def _read_index_map(path: str | Path) -> dict[str, Any]:
    """perpo id -> VLMEvalKit index, from JSON ``{id: index}`` or a TSV/CSV with columns
    ``perpo_id`` and ``index``."""
    path = Path(path)
    if path.suffix == ".json":
        return dict(json.loads(path.read_text()))
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        return {row["perpo_id"]: row["index"] for row in reader}


# -- CLI -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perpo.reporting.external", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lm = sub.add_parser("lmms-eval", help="predictions.jsonl -> a log lmms-eval's `--model from_log` scores")
    lm.add_argument("predictions")
    lm.add_argument("--task", required=True, help="lmms-eval task name, e.g. refcoco_bbox_rec_val, refcocog_bbox_rec_test")
    lm.add_argument("--out", required=True, help="folder for the log (pass it as --model_args logs=<folder>)")
    lm.add_argument("--docs", nargs="*", help="the split's lmms-lab parquet files/folder: maps ids to lmms-eval doc ids")
    sc = sub.add_parser("score", help="lmms-eval's RefCOCO metrics of predictions.jsonl (ground truth from --docs)")
    sc.add_argument("predictions")
    sc.add_argument("--docs", nargs="+", required=True, help="the split's lmms-lab RefCOCO parquet files or folder")
    sc.add_argument("--out", help="write the metrics as JSON here")
    sc.add_argument("--require-lmms-eval", action="store_true", help="fail instead of using the copy")
    vk = sub.add_parser("vlmeval", help="predictions.jsonl -> VLMEvalKit RefCOCO prediction table (.tsv / .xlsx)")
    vk.add_argument("predictions")
    vk.add_argument("--out", required=True, help="e.g. perpo_RefCOCO.tsv (PRED_FORMAT=tsv) or perpo_RefCOCO.xlsx")
    vk.add_argument("--index-map", help="perpo id -> VLMEvalKit index (JSON, or TSV/CSV with perpo_id, index)")
    args = parser.parse_args(argv)

    predictions = read_predictions(args.predictions)
    if args.command == "lmms-eval":
        doc_ids = lmms_eval_doc_ids(args.docs) if args.docs else None
        payload = to_lmms_eval_log(predictions, args.task, doc_ids)
        target = Path(args.out) / f"{args.task}.json"
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_json_atomic(target, payload)
        total = f" of {len(doc_ids)} docs" if doc_ids else ""
        print(f"{target}: {len(predictions)} predictions{total} for lmms-eval task {args.task}")
        if doc_ids and len(doc_ids) != len(predictions):
            print("note: lmms-eval's from_log needs every doc of the split; run evaluate.py on the whole split", file=sys.stderr)
    elif args.command == "score":
        sizes = {str(r["id"]).rsplit("-", 1)[0]: (r["width"], r["height"]) for r in predictions}
        truth = lmms_eval_ground_truth(args.docs, sizes)
        missing = [r["id"] for r in predictions if r["id"] not in truth]
        if missing:
            raise SystemExit(f"{len(missing)} predictions have no doc in --docs, e.g. {missing[:3]}")
        metrics = score_lmms_eval_refcoco(predictions, truth, lmms_eval_rec(allow_copy=not args.require_lmms_eval))
        if args.out:
            write_json_atomic(args.out, metrics)
        print(json.dumps(metrics, indent=2))
    else:
        index_map = _read_index_map(args.index_map) if args.index_map else None
        rows = to_vlmeval_rows(predictions, index_map)
        unmapped = sum(1 for r in rows if r["index"] == r["perpo_id"])
        write_vlmeval_table(rows, args.out)
        print(f"{args.out}: {len(rows)} rows" + (f" ({unmapped} without a VLMEvalKit index: perpo ids)" if unmapped else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
