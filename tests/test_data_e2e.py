"""Real-data layouts through ``train.py``, end to end (tiny model, CPU):

- "your own task": a user's CSV with their column names, pixel boxes, an image folder, one
  broken row, and their own reward function from their own module -- no change to perpo;
- the PerPO release's JSONL lists trained as they are (offline, no sampling).

Fixtures are synthetic grounding images written to disk in the users' layouts.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from subprocess_runs import REPO, script_env

BUDGET = [
    "warmstart.steps=20", "warmstart.batch_size=8", "warmstart.lr=5e-3", "warmstart.warmup_steps=0",
    "data.batch_size=4", "listsize=4", "data.min_margin=0.0", "data.max_empty_steps=1000", "eval.batch_size=8",
    "eval.image_check=false", "trainer.max_steps=2", "trainer.val_check_interval=2",
]  # fmt: skip


def _train(tmp: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, Path]:
    env = script_env(HF_DATASETS_CACHE=str(tmp / "hf"))
    run_dir = tmp / "run"
    proc = subprocess.run(
        [sys.executable, "train.py", f"paths.cache_dir={tmp / 'cache'}", f"hydra.run.dir={run_dir}", *BUDGET, *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    return proc, run_dir


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> Path:
    """pics/*.png + boxes.csv (columns: key, picture, phrase, x0, y0, x1, y1 as one "box" text)."""
    from perpo.data import make_records

    root = tmp_path_factory.mktemp("user")
    (root / "pics").mkdir()
    ds = make_records("grounding", 24, seed=5)
    with open(root / "boxes.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "picture", "phrase", "box"])
        for i in range(len(ds)):
            record = ds[i]
            record["image"].save(root / "pics" / f"{i}.png")
            w, h = record["width"], record["height"]
            x1, y1, x2, y2 = record["target"]
            writer.writerow([f"u{i}", f"{i}.png", record["prompt"], f"{x1 * w:.0f} {y1 * h:.0f} {x2 * w:.0f} {y2 * h:.0f}"])
        writer.writerow(["broken", "nope.png", "the red circle", "1 1 10 10"])  # image missing: skipped
    return root


def test_your_own_task_with_your_columns_and_your_reward(user_files, tmp_path):
    """The README's "bring your own data" command, verbatim but for paths."""
    proc, run_dir = _train(
        tmp_path, "data=custom", f"data.path={user_files / 'boxes.csv'}", f"data.options.image_dir={user_files / 'pics'}",
        "data.splits={train: train, val: train, test: train}", "data.sizes={train: null, val: 4, test: 8}",
        "data.columns={id: key, image: picture, prompt: phrase, target: box}",
        "+reward.fn._target_=tests.user_rewards.length_reward",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data_skipped"]["train"]["total"] == 25
    assert results["data_skipped"]["train"]["skipped"] == {"missing image": 1}
    assert results["data_skipped"]["train"]["examples"] == {"missing image": ["broken"]}
    assert results["list_counters"]["lists_seen"] == 8  # 2 steps x 4 prompts
    assert results["list_counters"]["lists_kept"] > 0  # the user's reward spreads the lists
    assert set(results["after"]) >= {"acc@0.5", "miou", "parse_rate"}


def test_a_missing_user_column_stops_at_start_up_naming_it(user_files, tmp_path):
    proc, _ = _train(
        tmp_path, "data=custom", f"data.path={user_files / 'boxes.csv'}", "data.splits={train: train, val: train, test: train}",
        "data.columns={id: key, image: picture, prompt: phrase, target: bbox}",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "'bbox'" in proc.stderr and "available columns" in proc.stderr


@pytest.fixture(scope="module")
def release_files(tmp_path_factory) -> Path:
    """The release's JSONL layout: one list of 4 generated boxes per expression, IoU rewards."""
    from perpo.boxes import get_box_format
    from perpo.data import make_records
    from perpo.rewards.registry import get_reward

    root = tmp_path_factory.mktemp("release")
    (root / "images").mkdir()
    norm2, iou = get_box_format("norm2"), get_reward("iou")
    ds = make_records("grounding", 16, seed=9)
    with open(root / "lists.jsonl", "w") as f:
        for i in range(len(ds)):
            record = ds[i]
            record["image"].save(root / "images" / f"{i}.png")
            x1, y1, x2, y2 = record["target"]
            boxes = [(x1, y1, x2, y2), (x1, y1, (x1 + x2) / 2, y2), (0.0, 0.0, 0.2, 0.2), (0.5, 0.5, 1.0, 1.0)]
            answers = [norm2.format(b, 64, 64) for b in boxes]
            scores = sorted((iou(a, record) or 0.0 for a in answers), reverse=True)  # the release sorts...
            line = {
                "image_id": i, "image_path": f"images/{i}.png", "answer": answers[0],
                "question": "<image>\nPlease provide the bounding box coordinate of the region this sentence describes: " + record["prompt"],
                "answers_gen": answers, "iou_scores": [iou(a, record) or 0.0 for a in answers],  # ...we do not need it to
            }  # fmt: skip
            assert scores[0] == line["iou_scores"][0]
            f.write(json.dumps(line) + "\n")
    return root


def test_release_lists_train_as_they_are(release_files, user_files, tmp_path):
    """data=release_lists: the JSONL lists train offline (no sampling), evaluated on other records."""
    evaluation = (
        "{split: train, adapter: columns, path: " + str(user_files / "boxes.csv") + ", columns: {id: key, image: picture, "
        "prompt: phrase, target: box}, options: {image_dir: " + str(user_files / "pics") + ", box: xyxy_pixels}}"
    )
    proc, run_dir = _train(
        tmp_path, "data=release_lists", f"data.path={release_files / 'lists.jsonl'}",
        "~data.splits.val", "~data.splits.test", f"+data.splits.val={evaluation}", f"+data.splits.test={evaluation}",
        "data.sizes={train: null, val: 4, test: 8}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads((run_dir / "results.json").read_text())
    counters = results["list_counters"]
    assert counters["lists_seen"] == 8 and counters["answers"] == 32
    assert counters["unparsed"] == 0  # every stored answer is a box
    assert counters["lists_kept"] == 8  # every list spreads: IoU 1.0 best vs ~0 worst
    assert results["data_skipped"]["train"] == {"total": 16, "skipped": {}, "examples": {}}


def test_evaluate_on_a_source_split_by_its_own_name(tmp_path):
    """``evaluate.py data=refcoco eval.split=testB``: a split of the source, not one of ours, is
    read on its own (the other splits are not loaded) and scored; skipped rows are reported."""
    from test_adapters import write_refcoco

    from perpo.models.loading import ensure_tiny

    root = write_refcoco(tmp_path / "refcoco", splits=("testB",))  # no val / testA files at all
    checkpoint = ensure_tiny(tmp_path / "tiny")
    env = script_env(HF_DATASETS_CACHE=str(tmp_path / "hf"))
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "evaluate.py", "data=refcoco", f"data.path={root}", "eval.split=testB",
         f"eval.checkpoint={checkpoint}", f"hydra.run.dir={out}", "eval.image_check=false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads((out / "eval.json").read_text())
    # 6 source rows -> 8 expressions (100 has 2, 105 has 2); 4 skipped: degenerate (102),
    # outside (103), unreadable (104), empty expression (105-1); 101 is clipped and kept
    assert report["split"] == "testB" and report["num_records"] == 4
    assert set(report["metrics"]) >= {"acc@0.5", "miou", "parse_rate"}
    assert report["data_skipped"]["total"] == 8 and sum(report["data_skipped"]["skipped"].values()) == 4
