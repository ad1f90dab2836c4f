"""Stored lists: the schema of scored lists on disk and their reader.

A stored list is a record (``perpo.data.records``) plus its N answers, rewards and parse flags.
``sample.py`` writes them as parquet shards in a resumable folder (``data/chunk-*.parquet`` +
``progress/chunk-*.json`` + ``meta.json`` + ``summary.json``); the PerPO release's JSONL adapter
produces the same columns; ``train.py data.lists=<path>`` trains on them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

HIST_BINS = 10



# A stored list is a record (perpo.data.records schema) plus these columns. ``sample.py`` writes
# them; the PerPO release's JSONL adapter produces them too; ``data.lists=<path>`` trains on them.
LIST_COLUMNS = ("answers", "rewards", "parsed")  # [N] str, [N] float32 in [0, 1], [N] bool


TOKEN_COLUMN = "answer_ids"  # optional [N][*] int32: the sampler's token ids (with EOS)


REF_COLUMNS = ("ref_logps", "ref_num_tokens")  # optional [N] float32 summed log-probs, [N] int32


def list_features(task: str, *, answer_ids: bool = False, ref_logps: bool = False):
    """``datasets.Features`` of stored lists of ``task``: the record's columns plus the list's."""
    import datasets

    from perpo.data.records import features_for

    features = dict(features_for(task))
    features["answers"] = datasets.List(datasets.Value("string"))
    features["rewards"] = datasets.List(datasets.Value("float32"))
    features["parsed"] = datasets.List(datasets.Value("bool"))
    if answer_ids:
        features[TOKEN_COLUMN] = datasets.List(datasets.List(datasets.Value("int32")))
    if ref_logps:
        features["ref_logps"] = datasets.List(datasets.Value("float32"))
        features["ref_num_tokens"] = datasets.List(datasets.Value("int32"))
    return datasets.Features(features)


META = "meta.json"


SUMMARY = "summary.json"


class ListsError(ValueError):
    """Stored lists cannot be used as asked: the message names the folder and what to change."""


# ----- where chunks live --------------------------------------------------------------------
def chunk_name(index: int) -> str:
    return f"chunk-{index:05d}"


def done_chunks(out_dir: Path) -> set[int]:
    progress = out_dir / "progress"
    if not progress.is_dir():
        return set()
    return {int(p.stem.split("-")[1]) for p in progress.glob("chunk-*.json")}


def summarize(out_dir: Path, total_chunks: int) -> dict:
    """Counts over every finished chunk (all ranks), with the reward histogram."""
    totals = {"records": 0, "kept": 0, "dropped": 0, "answers": 0, "unparsed": 0, "hist": [0] * HIST_BINS}
    done = sorted(done_chunks(out_dir))
    for index in done:
        counts = read_json(out_dir / "progress" / f"{chunk_name(index)}.json")
        for key, value in counts.items():
            if key == "hist":
                totals["hist"] = [a + b for a, b in zip(totals["hist"], value)]
            else:
                totals[key] += value
    totals["chunks_done"], totals["chunks_total"] = len(done), total_chunks
    totals["complete"] = len(done) == total_chunks
    totals["unparsed_fraction"] = totals["unparsed"] / max(totals["answers"], 1)
    return totals


# ----- reading stored lists back -----------------------------------------------------------
def load_lists(path: str | Path, *, need_ref: bool = False):
    """The stored lists under ``path`` (a ``sample.py`` folder, or parquet file(s)) as one Dataset.

    Refuses, naming the folder, an unfinished folder (``summary.json`` missing), lists of
    different sizes, and ``need_ref`` without stored reference log-probs.
    """
    import datasets

    path = Path(path)
    if not path.exists():
        raise ListsError(f"data.lists={path}: no such file or folder")
    if path.is_dir():
        files = sorted((path / "data").glob("chunk-*.parquet")) or sorted(path.glob("*.parquet"))
        if (path / META).exists() and not (path / SUMMARY).exists():
            summary = summarize(path, _total_chunks(path))
            raise ListsError(
                f"data.lists={path} is unfinished ({summary['chunks_done']} of {summary['chunks_total']} chunks): "
                "run the same sample.py command again to finish it"
            )
    else:
        files = [path]
    if not files:
        raise ListsError(f"data.lists={path} holds no parquet shards (expected {path}/data/chunk-*.parquet)")
    try:
        ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    except Exception as err:  # datasets wraps pyarrow's error: find the shard at fault
        from perpo.data.files import files_problem, root_cause

        problem = files_problem("parquet", [str(f) for f in files])
        if problem is None:
            cause = root_cause(err)
            problem = f"{type(cause).__name__}: {cause}"
        fix = (
            "delete that shard and its progress/chunk-*.json and run the same sample.py command again to redo it"
            if path.is_dir() and (path / META).exists() else "write the file again"
        )
        raise ListsError(f"data.lists={path}: the stored lists cannot be read: {problem} ({fix})") from err
    missing = [c for c in ("id", "image", "answers", "rewards", "parsed") if c not in ds.column_names]
    if missing:
        raise ListsError(f"data.lists={path}: column(s) {missing} missing; found {ds.column_names}")
    if need_ref and not all(c in ds.column_names for c in REF_COLUMNS):
        raise ListsError(
            f"reference=cached reads each answer's reference log-prob from the lists, but {path} has none: "
            "sample them with sample.ref_logps=true, or use reference=copy"
        )
    check_list_sizes(ds, f"data.lists={path}")
    return ds


def check_list_sizes(ds, where: str) -> int:
    """The one list size N of stored lists ``ds``; refuses mixed sizes (a batch is [B, N])."""
    sizes: dict[int, list[str]] = {}
    for row_id, rewards in zip(ds["id"], ds["rewards"]):
        sizes.setdefault(len(rewards), []).append(row_id)
    if len(sizes) != 1:
        shown = "; ".join(f"N={n}: {len(ids)} lists (e.g. {ids[0]})" for n, ids in sorted(sizes.items()))
        raise ListsError(f"{where}: lists of different sizes ({shown}); a batch needs one size N: keep one size")
    (n,) = sizes
    if n < 2:
        raise ListsError(f"{where}: lists of size {n}; ranking needs N >= 2")
    return n


def read_json(file: Path) -> dict:
    """A JSON object perpo wrote into a lists folder (``meta.json``, ``progress/chunk-*.json``);
    a damaged one is a :class:`ListsError` naming it."""
    try:
        value = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ListsError(
            f"{file} cannot be read ({err}): it is damaged; delete it (a progress file: that chunk is sampled "
            "again; meta.json: sample into a new sample.out_dir)"
        ) from None
    if not isinstance(value, dict):
        raise ListsError(f"{file} holds a JSON {type(value).__name__}, not the object perpo writes: it is damaged")
    return value


def _total_chunks(path: Path) -> int:
    meta = read_json(path / META)
    try:
        return math.ceil(int(meta["num_records"]) / int(meta["chunk_size"]))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        raise ListsError(f"{path / META} lacks num_records / chunk_size: it is damaged") from None


def lists_meta(path: str | Path) -> dict | None:
    meta = Path(path) / META
    return read_json(meta) if meta.exists() else None
