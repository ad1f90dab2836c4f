"""Real-data adapters (perpo.data.adapters) on tiny fixtures built in tmp_path.

Images are 32 x 24 pixels, so hand-computed normalized boxes are exact in float32
(multiples of 1/8 in x, 1/4 in y).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import datasets
import pytest
from PIL import Image

from perpo.data.adapters import ADAPTERS, DataError, SkipReport, load_split
from perpo.data.records import features_for, validate_record

W, H = 32, 24
CONF = Path(__file__).resolve().parents[1] / "conf" / "data"


def png(mode: str = "RGB", size=(W, H), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    fill = color if mode in ("RGB", "RGBA") else 128
    Image.new(mode, size, fill).save(buffer, "PNG")
    return buffer.getvalue()


def rows_of(ds: datasets.Dataset) -> list[dict]:
    return [ds[i] for i in range(len(ds))]


def assert_records(ds: datasets.Dataset, task: str) -> list[dict]:
    assert ds.features == features_for(task)
    rows = rows_of(ds)
    for row in rows:
        assert validate_record(row) is None, (row["id"], validate_record(row))
        assert row["image"].mode == "RGB"
    return rows


# ----- refcoco ----------------------------------------------------------------------------------
REFCOCO_FEATURES = datasets.Features(
    {
        "question_id": datasets.Value("string"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answer": datasets.List(datasets.Value("string")),
        "segmentation": datasets.List(datasets.Value("float32")),
        "bbox": datasets.List(datasets.Value("float32")),
        "iscrowd": datasets.Value("int8"),
        "file_name": datasets.Value("string"),
    }
)

# question_id, image bytes, expressions, COCO bbox [x, y, w, h] in pixels
REFCOCO_VAL = [
    ("100", png(), ["the red box", "box on the left"], [8, 6, 16, 12]),  # -> 2 records
    ("101", png("L"), ["whole picture"], [-0.5, 0, 32.5, 24]),  # 0.5 px outside: clipped
    ("102", png(), ["nothing"], [5, 5, 0, 4]),  # w = 0: degenerate
    ("103", png(), ["too wide"], [10, 10, 30, 10]),  # x + w = 40 > 32 + 1: outside
    ("104", b"not an image", ["broken"], [1, 1, 4, 4]),  # PIL cannot decode
    ("105", png(), ["a dog", "  "], [0, 0, 32, 24]),  # second expression empty
]


def write_refcoco(root: Path, rows=REFCOCO_VAL, splits=("val", "testA")) -> Path:
    (root / "data").mkdir(parents=True)
    columns = {
        "question_id": [r[0] for r in rows],
        "image": [{"bytes": r[1], "path": None} for r in rows],
        "question": ["Please carefully observe the area circled in the image"] * len(rows),
        "answer": [r[2] for r in rows],
        "segmentation": [[0.0] * 8 for _ in rows],
        "bbox": [r[3] for r in rows],
        "iscrowd": [0] * len(rows),
        "file_name": [f"COCO_train2014_{i:012d}.jpg" for i in range(len(rows))],
    }
    for split in splits:  # the lmms-lab file naming
        ds = datasets.Dataset.from_dict(columns, features=REFCOCO_FEATURES)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.fixture(scope="module")
def refcoco_dir(tmp_path_factory) -> Path:
    return write_refcoco(tmp_path_factory.mktemp("refcoco"))


@pytest.fixture
def cache(tmp_path) -> str:
    return str(tmp_path / "hf-cache")


def refcoco_cfg(path, cache, **extra) -> dict:
    cfg = {"adapter": "refcoco", "path": str(path), "splits": {"val": "val", "test": "testA"},
           "options": {"cache_dir": cache}, "sizes": {"val": None, "test": None}}
    cfg.update(extra)
    return cfg


def test_refcoco_records_boxes_and_skips(refcoco_dir, cache, caplog):
    with caplog.at_level(logging.INFO, logger="perpo.data.adapters"):
        ds, report = load_split(refcoco_cfg(refcoco_dir, cache), "val", task="grounding")
    rows = assert_records(ds, "grounding")
    by_id = {r["id"]: r for r in rows}
    # one record per expression: 100 has two, 105 keeps its first
    assert list(by_id) == ["100-0", "100-1", "101-0", "105-0"]
    assert [by_id["100-0"]["prompt"], by_id["100-1"]["prompt"]] == ["the red box", "box on the left"]
    # COCO [8, 6, 16, 12] on 32 x 24: x1 = 8/32, y1 = 6/24, x2 = (8+16)/32, y2 = (6+12)/24
    assert by_id["100-0"]["target"] == [0.25, 0.25, 0.75, 0.75]
    assert by_id["100-1"]["target"] == [0.25, 0.25, 0.75, 0.75]
    # [-0.5, 0, 32.5, 24]: x1 = -0.5 px and x2 = 32 px -> within 1 px -> clipped to [0, 0, 1, 1]
    assert by_id["101-0"]["target"] == [0.0, 0.0, 1.0, 1.0]
    assert (by_id["101-0"]["width"], by_id["101-0"]["height"]) == (W, H)

    assert report.total == 8 and report.kept() == 4 == len(ds)
    assert report.counts == {"degenerate box": 1, "box outside image": 1, "unreadable image": 1,
                             "empty expression": 1}
    assert report.examples == {"degenerate box": ["102-0"], "box outside image": ["103-0"],
                               "unreadable image": ["104-0"], "empty expression": ["105-1"]}
    summary = report.summary()
    assert summary.startswith("refcoco val: 4 of 8 rows skipped (")
    assert "1 degenerate box: id 102-0" in summary and "1 unreadable image: id 104-0" in summary
    assert summary in caplog.text


def test_refcoco_cache_hit_gives_the_same_report_and_sizes_cap(refcoco_dir, cache, monkeypatch):
    from perpo.data import adapters

    cfg = refcoco_cfg(refcoco_dir, cache)
    first = load_split(cfg, "test", task="grounding")

    def no_decoding(*args):
        raise AssertionError("a cached split must not be read again")

    monkeypatch.setattr(adapters, "_read_image", no_decoding)  # a rerun would skip every row
    again = load_split(cfg, "test", task="grounding")  # from the datasets cache
    assert again[1] == first[1] and again[0]["id"] == first[0]["id"]
    monkeypatch.undo()
    # sizes caps source rows: the first 2 rows hold 3 expressions
    capped, report = load_split({**cfg, "sizes": {"test": 2}}, "test", task="grounding")
    assert capped["id"] == ["100-0", "100-1", "101-0"] and report.total == 3


def test_refcoco_single_file_and_renamed_columns(tmp_path, cache):
    root = tmp_path / "renamed"
    (root / "data").mkdir(parents=True)
    ds = datasets.Dataset.from_dict(
        {"qid": ["7"], "picture": [{"bytes": png(), "path": None}], "sentences": [["a box"]],
         "box": [[0, 0, 16, 24]]},
        features=datasets.Features({"qid": datasets.Value("string"), "picture": datasets.Image(),
                                    "sentences": datasets.List(datasets.Value("string")),
                                    "box": datasets.List(datasets.Value("float32"))}),
    )
    file = root / "data" / "refs.parquet"
    ds.to_parquet(str(file))
    cfg = {"adapter": "refcoco", "path": str(file), "splits": {"test": "train"},  # one file = "train"
           "columns": {"id": "qid", "image": "picture", "expressions": "sentences", "bbox": "box"},
           "options": {"cache_dir": cache}}
    out, _ = load_split(cfg, "test", task="grounding")
    assert out["id"] == ["7-0"] and out[0]["target"] == [0.0, 0.0, 0.5, 1.0]


def test_refcoco_errors_name_path_column_and_split(refcoco_dir, tmp_path, cache):
    missing = tmp_path / "nowhere" / "refcoco"
    with pytest.raises(DataError) as err:
        load_split(refcoco_cfg(missing, cache), "val", task="grounding")
    assert str(missing) in str(err.value) and "data.path" in str(err.value)

    with pytest.raises(DataError) as err:
        load_split(refcoco_cfg(refcoco_dir, cache, columns={"bbox": "box_xywh"}), "val", task="grounding")
    message = str(err.value)
    assert "box_xywh" in message and "refcoco" in message and "val-00000-of-00001.parquet" in message
    assert "question_id" in message and "segmentation" in message  # the available columns

    with pytest.raises(DataError) as err:
        load_split(refcoco_cfg(refcoco_dir, cache, splits={"test": "testB"}), "test", task="grounding")
    assert "testB" in str(err.value) and "testA" in str(err.value) and "val" in str(err.value)

    with pytest.raises(DataError, match="train"):  # our split not configured
        load_split(refcoco_cfg(refcoco_dir, cache), "train", task="grounding")
    with pytest.raises(DataError, match="grounding"):
        load_split(refcoco_cfg(refcoco_dir, cache), "val", task="ocr")
    with pytest.raises(DataError, match="prompt_regex"):  # an option of another adapter
        load_split(refcoco_cfg(refcoco_dir, cache, options={"prompt_regex": "x"}), "val", task="grounding")
    with pytest.raises(DataError, match="nope"):
        load_split({"adapter": "nope", "path": str(refcoco_dir)}, "val", task="grounding")


def test_hub_like_path_fails_with_data_error_offline(monkeypatch, cache):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as err:
        load_split({"adapter": "refcoco", "path": "no-such-owner/no-such-set", "options": {"cache_dir": cache}},
                   "val", task="grounding")
    assert "no-such-owner/no-such-set" in str(err.value)


def test_hub_id_goes_to_datasets_as_a_hub_dataset(refcoco_dir, cache, monkeypatch):
    """``data.path=lmms-lab/RefCOCO`` (a hub id, no such local folder): the id itself is handed to
    ``datasets.load_dataset_builder`` and its data files read as the local copy's would be. The hub
    is out of reach here, so the builder call is answered from the local copy of the same layout:
    what this checks is perpo's side (hub ids recognised, split files picked, records converted)."""
    real = datasets.load_dataset_builder
    asked = []

    def from_local_copy(source, **kwargs):
        asked.append(source)
        assert source == "lmms-lab/RefCOCO" and not kwargs.get("data_dir")
        return real(str(refcoco_dir), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset_builder", from_local_copy)
    hub, hub_report = load_split(refcoco_cfg("lmms-lab/RefCOCO", cache), "val", task="grounding")
    monkeypatch.setattr(datasets, "load_dataset_builder", real)
    local, local_report = load_split(refcoco_cfg(refcoco_dir, cache), "val", task="grounding")
    assert asked == ["lmms-lab/RefCOCO"]
    assert rows_of(hub) == rows_of(local) and len(hub) > 0
    assert hub_report.counts == local_report.counts and hub_report.skipped == 4  # same rows skipped, same reasons


# ----- ocr_pages: an imagefolder with metadata.jsonl ------------------------------------------
def test_ocr_pages_imagefolder(tmp_path, cache):
    root = tmp_path / "pages" / "test"
    root.mkdir(parents=True)
    pages = [("p0.png", png(), "Chapter one\nIt was a dark night."), ("p1.png", png("RGBA"), "second page"),
             ("p2.png", png(), "   "), ("p3.png", b"\x89PNG truncated", "lost page")]
    with open(root / "metadata.jsonl", "w") as f:
        for name, data, text in pages:
            (root / name).write_bytes(data)
            f.write(json.dumps({"file_name": name, "text": text}) + "\n")
    cfg = {"adapter": "ocr_pages", "path": str(tmp_path / "pages"), "options": {"cache_dir": cache},
           "columns": {"id": None}}
    ds, report = load_split(cfg, "test", task="ocr")
    rows = assert_records(ds, "ocr")
    assert [r["prompt"] for r in rows] == ["", ""]
    assert [r["target"] for r in rows] == ["Chapter one\nIt was a dark night.", "second page"]
    assert [r["id"] for r in rows] == ["ocr_pages-test-000000", "ocr_pages-test-000001"]
    assert report.counts == {"empty text": 1, "unreadable image": 1}
    assert report.examples == {"empty text": ["ocr_pages-test-000002"], "unreadable image": ["ocr_pages-test-000003"]}


# ----- counting: JSONL with image paths -------------------------------------------------------
def test_counting_jsonl_with_prompt_regex(tmp_path, cache):
    (tmp_path / "img").mkdir()
    for i in range(2):
        (tmp_path / "img" / f"{i}.png").write_bytes(png())
    rows = [
        {"qid": "q0", "file": "0.png", "question": "How many dogs are there?", "answer": 3},
        {"qid": "q1", "file": "1.png", "question": "how many red cars are in the picture?", "answer": "0"},
        {"qid": "q2", "file": "0.png", "question": "How many cats are there?", "answer": 2.5},
        {"qid": "q3", "file": "0.png", "question": "How many birds are there?", "answer": -1},
        {"qid": "q4", "file": "0.png", "question": "What colour is the sky?", "answer": 1},
        {"qid": "q5", "file": "9.png", "question": "How many cows are there?", "answer": 2},
    ]
    file = tmp_path / "tally.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"adapter": "counting", "path": str(file), "splits": {"test": "train"},
           "columns": {"id": "qid", "image": "file", "prompt": "question", "count": "answer"},
           "options": {"image_dir": str(tmp_path / "img"), "cache_dir": cache,
                       "prompt_regex": r"how many (?P<noun>.+?) (?:are|is) (?:there|in)"}}
    # counts are read as strings here ("0") and as numbers (3, 2.5): pyarrow keeps mixed JSON
    # values only as strings, so give the count column one type per file in practice
    ds, report = load_split(cfg, "test", task="counting")
    rows_out = assert_records(ds, "counting")
    assert [(r["id"], r["prompt"], r["target"]) for r in rows_out] == [("q0", "dogs", 3), ("q1", "red cars", 0)]
    assert report.counts == {"non-integer count": 1, "negative count": 1, "prompt_regex did not match": 1,
                             "missing image": 1}
    assert report.examples["missing image"] == ["q5"] and report.examples["negative count"] == ["q3"]


def test_counting_without_regex_keeps_the_column(tmp_path, cache):
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": png(), "path": None}] * 2, "label": ["dog", "person"], "count": [4, 7]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string"),
                                    "count": datasets.Value("int64")}),
    )
    ds.to_parquet(str(tmp_path / "pixmo.parquet"))
    cfg = {"adapter": "counting", "path": str(tmp_path / "pixmo.parquet"), "splits": {"train": "train"},
           "columns": {"prompt": "label"}, "options": {"cache_dir": cache}}
    out, report = load_split(cfg, "train", task="counting")
    assert [(r["prompt"], r["target"]) for r in assert_records(out, "counting")] == [("dog", 4), ("person", 7)]
    assert report.summary() == "counting train: 2 rows, none skipped"


# ----- release_lists --------------------------------------------------------------------------
PREFIX = "Please provide the bounding box coordinate of the region this sentence describes: "


@pytest.fixture
def release_dir(tmp_path) -> Path:
    root = tmp_path / "release"
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(png())
    absolute = tmp_path / "elsewhere.png"
    absolute.write_bytes(png("L"))
    gt = "[0.25, 0.25, 0.75, 0.75]"
    lines = [
        {"image_id": 9, "image_path": "images/a.png", "question": "<image>\n" + PREFIX + "man in red shirt",
         "answer": gt, "answers_gen": ["[0.2, 0.3, 0.7, 0.8]", "no box here", gt], "iou_scores": [0.6, 0.0, 1.2]},
        {"image_id": 9, "image_path": str(absolute), "question": PREFIX.upper() + "<image> the dog",
         "answer": gt, "answers_gen": ["[0.1, 0.1, 0.5, 0.5]", "[0.3, 0.3, 0.6, 0.6]"], "iou_scores": [0.1, 0.4]},
        {"image_id": 10, "image_path": "images/a.png", "question": "the cat",
         "answer": gt, "answers_gen": ["[0, 0, 1, 1]", "[0.1, 0.1, 0.2, 0.2]"], "iou_scores": [0.2, -0.5]},
        {"image_id": 11, "image_path": "images/a.png", "question": PREFIX + "x",
         "answer": gt, "answers_gen": ["a", "b", "c"], "iou_scores": [0.1, 0.2]},  # 3 answers, 2 rewards
        {"image_id": 12, "image_path": "images/a.png", "question": PREFIX + "y",
         "answer": gt, "answers_gen": ["a"], "iou_scores": [0.1]},  # a list of one
        {"image_id": 13, "image_path": "images/a.png", "question": PREFIX + "z",
         "answer": gt, "answers_gen": ["a", "b"], "iou_scores": [0.1, float("nan")]},
        {"image_id": 14, "image_path": "images/missing.png", "question": PREFIX + "w",
         "answer": gt, "answers_gen": ["a", "b"], "iou_scores": [0.1, 0.2]},
        {"image_id": 15, "image_path": "images/a.png", "question": PREFIX + "v",
         "answer": "[0.5, 0.5, 0.5, 0.9]", "answers_gen": ["a", "b"], "iou_scores": [0.1, 0.2]},
    ]
    with open(root / "perpo_refcoco.jsonl", "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")  # json writes NaN as a bare NaN, as Python's json reads it
    return root


def test_release_lists(release_dir, cache):
    from perpo.data.stored_lists import list_features

    cfg = {"adapter": "release_lists", "path": str(release_dir), "splits": {"train": "train"},
           "options": {"cache_dir": cache}}
    ds, report = load_split(cfg, "train", task="grounding")
    assert ds.features == list_features("grounding")
    rows = rows_of(ds)
    for row in rows:
        assert validate_record(row) is None
    assert [r["id"] for r in rows] == ["9-0", "9-1", "10-2"]
    assert [r["prompt"] for r in rows] == ["man in red shirt", "the dog", "the cat"]
    first = rows[0]
    assert first["target"] == [0.25, 0.25, 0.75, 0.75]
    assert first["answers"] == ["[0.2, 0.3, 0.7, 0.8]", "no box here", "[0.25, 0.25, 0.75, 0.75]"]  # order kept
    assert first["rewards"] == pytest.approx([0.6, 0.0, 1.0])  # 1.2 clipped; float32
    assert first["parsed"] == [True, False, True]
    assert rows[2]["rewards"] == [0.2, 0.0] or rows[2]["rewards"] == pytest.approx([0.2, 0.0])
    assert rows[1]["image"].mode == "RGB"  # the grayscale file, converted
    assert report.counts == {"answers/rewards length mismatch": 1, "fewer than 2 answers": 1, "NaN reward": 1,
                             "missing image": 1, "degenerate box": 1}
    assert report.examples["NaN reward"] == ["13-5"] and report.examples["missing image"] == ["14-6"]
    assert report.total == 8 and report.kept() == 3


def test_release_lists_split_override_reads_refcoco_for_eval(release_dir, refcoco_dir, cache):
    cfg = {"adapter": "release_lists", "path": str(release_dir), "options": {"cache_dir": cache},
           "splits": {"train": "train",
                      "test": {"split": "testA", "adapter": "refcoco", "path": str(refcoco_dir),
                               "options": {"cache_dir": cache}}}}
    test, _ = load_split(cfg, "test", task="grounding")
    assert test.features == features_for("grounding") and len(test) == 4


# ----- columns (your own data) ----------------------------------------------------------------
@pytest.mark.parametrize(
    "layout, box",
    [("xyxy_pixels", "[8, 6, 24, 18]"), ("xywh_pixels", "8 6 16 12"), ("xyxy_norm", "0.25,0.25,0.75,0.75")],
)
def test_columns_csv_grounding_box_layouts(tmp_path, cache, layout, box):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "one.png").write_bytes(png())
    (tmp_path / "pics" / "bad.png").write_bytes(b"garbage")
    table = tmp_path / "mine.csv"
    table.write_text(
        "key,file,phrase,region\n"
        f'k1,one.png,the red square,"{box}"\n'
        'k2,bad.png,unreadable,"[1, 1, 2, 2]"\n'
        'k3,one.png,,"[1, 1, 2, 2]"\n'
        'k4,one.png,no box,"[1, 1, 2]"\n'
    )
    cfg = {"adapter": "columns", "path": str(table), "splits": {"train": "train"},
           "columns": {"id": "key", "image": "file", "prompt": "phrase", "target": "region"},
           "options": {"box": layout, "image_dir": str(tmp_path / "pics"), "cache_dir": cache}}
    ds, report = load_split(cfg, "train", task="grounding")
    rows = assert_records(ds, "grounding")
    # pixels (8, 6)-(24, 18) of a 32 x 24 image = (8/32, 6/24)-(24/32, 18/24)
    assert [(r["id"], r["prompt"], r["target"]) for r in rows] == [("k1", "the red square", [0.25, 0.25, 0.75, 0.75])]
    assert report.counts == {"unreadable image": 1, "empty prompt": 1, "malformed box": 1}
    assert report.examples == {"unreadable image": ["k2"], "empty prompt": ["k3"], "malformed box": ["k4"]}


def test_columns_ocr_parquet_ids_generated_and_errors(tmp_path, cache):
    ds = datasets.Dataset.from_dict(
        {"img": [{"bytes": png(), "path": None}, None], "words": ["hello", "lost"]},
        features=datasets.Features({"img": datasets.Image(), "words": datasets.Value("string")}),
    )
    ds.to_parquet(str(tmp_path / "ocr.parquet"))
    cfg = {"adapter": "columns", "path": str(tmp_path / "ocr.parquet"), "splits": {"val": "train"},
           "columns": {"image": "img", "prompt": None, "target": "words"}, "options": {"cache_dir": cache}}
    out, report = load_split(cfg, "val", task="ocr")
    rows = assert_records(out, "ocr")
    assert [(r["id"], r["prompt"], r["target"]) for r in rows] == [("columns-val-000000", "", "hello")]
    assert report.examples == {"missing image": ["columns-val-000001"]}

    with pytest.raises(DataError, match="box"):
        load_split({**cfg, "options": {"box": "cxcywh", "cache_dir": cache}}, "val", task="grounding")
    with pytest.raises(DataError) as err:  # an explicitly named column must exist
        load_split({**cfg, "columns": {**cfg["columns"], "id": "uid"}}, "val", task="ocr")
    assert "uid" in str(err.value) and "img, words" in str(err.value)


def test_every_row_skipped_is_an_error(tmp_path, cache):
    table = tmp_path / "bad.csv"
    table.write_text("image,prompt,target\nnope.png,x,1\n")
    cfg = {"adapter": "columns", "path": str(table), "options": {"cache_dir": cache}}
    with pytest.raises(DataError, match="no usable rows.*missing image"):
        load_split(cfg, "train", task="counting")


def test_skip_report_summary_lists_at_most_five_ids():
    report = SkipReport(total=9)
    for i in range(7):
        report.add("missing image", f"r{i}")
    report.add("degenerate box", "r7")
    assert report.kept() == 1
    assert report.summary() == (
        "8 of 9 rows skipped (7 missing image: ids r0, r1, r2, r3, r4, ...; 1 degenerate box: id r7)"
    )


# ----- configs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["refcoco", "ocr_pages", "counting", "release_lists", "custom"])
def test_config_files_have_the_shared_keys(name):
    from omegaconf import OmegaConf

    from perpo.data.adapters import _LAYOUTS

    synthetic = OmegaConf.to_container(OmegaConf.load(CONF / "synthetic.yaml"))
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / f"{name}.yaml"))  # unresolved: ${paths.root}
    shared = {"name", "seed", "sizes", "batch_size", "min_margin", "blank_image", "max_empty_steps", "lists"}
    assert shared & set(synthetic) <= set(cfg)
    assert cfg["min_margin"] == synthetic["min_margin"] == "${task.min_margin}"
    assert cfg["adapter"] in ADAPTERS and cfg["path"]
    assert set(cfg["sizes"]) == set(cfg["splits"]) == {"train", "val", "test"}
    layout = _LAYOUTS[cfg["adapter"]]
    assert set(cfg["columns"]) <= set(layout.columns)  # roles of that adapter
    assert set(cfg["options"]) <= set(layout.options) | {"format", "cache_dir"}


def test_a_conf_file_with_interpolated_path_through_load_split(tmp_path, cache):
    """conf/data/custom.yaml as Hydra composes it: data.path = ${paths.root}/data/custom."""
    from omegaconf import OmegaConf

    folder = tmp_path / "data" / "custom"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(png())
    (folder / "train.csv").write_text("id,image,prompt,target\nr1,a.png,circles,3\nr2,a.png,squares,x\n")
    root = OmegaConf.create({"paths": {"root": str(tmp_path)}, "task": {"min_margin": 0.1},
                             "data": OmegaConf.load(CONF / "custom.yaml")})
    root.data.options.cache_dir = cache
    ds, report = load_split(root.data, "train", task="counting")
    assert [(r["id"], r["prompt"], r["target"]) for r in assert_records(ds, "counting")] == [("r1", "circles", 3)]
    assert report.examples == {"non-integer count": ["r2"]}


def test_exif_rotated_image_sizes_match_what_datasets_decodes(tmp_path, cache):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees on display
    Image.new("RGB", (W, H), (10, 200, 10)).save(tmp_path / "rot.jpg", "JPEG", exif=exif)
    (tmp_path / "rows.jsonl").write_text(json.dumps({"image": "rot.jpg", "target": "page"}) + "\n")
    cfg = {"adapter": "columns", "path": str(tmp_path / "rows.jsonl"), "columns": {"prompt": None},
           "options": {"cache_dir": cache}}
    ds, _ = load_split(cfg, "train", task="ocr")
    row = assert_records(ds, "ocr")[0]  # validate_record compares the decoded size with width/height
    assert (row["width"], row["height"]) == (H, W) == row["image"].size


def test_release_lists_in_the_padded_square_frame_read_back_to_the_image(tmp_path, cache):
    """option box_frame=padded_square: the release's "[x1, y1, x2, y2]" as fractions of the padded
    square (LLaVA-1.5's image_aspect_ratio=pad). A 40 x 20 image pads to 40 x 40 with 10 rows above:
    y 0.375 -> 15 px of the square -> 5 px of the image -> 0.25; x is unchanged. Read as the
    original frame (the default), the same answer is another box."""
    from PIL import Image as PILImage

    root = tmp_path / "wide"
    root.mkdir()
    PILImage.new("RGB", (40, 20), (10, 20, 30)).save(root / "w.png")
    line = {"image_id": 1, "image_path": "w.png", "question": PREFIX + "the left half", "answer": "[0.25, 0.375, 0.75, 0.625]",
            "answers_gen": ["[0.25, 0.375, 0.75, 0.625]", "[0, 0, 1, 1]"], "iou_scores": [1.0, 0.25]}  # fmt: skip
    (root / "lists.jsonl").write_text(json.dumps(line) + "\n")
    cfg = {"adapter": "release_lists", "path": str(root), "options": {"cache_dir": cache, "box_frame": "padded_square"}}
    padded = rows_of(load_split(cfg, "train", task="grounding")[0])[0]
    assert padded["target"] == pytest.approx([0.25, 0.25, 0.75, 0.75])
    cfg["options"]["box_frame"] = "original"
    assert rows_of(load_split(cfg, "train", task="grounding")[0])[0]["target"] == pytest.approx([0.25, 0.375, 0.75, 0.625])
    cfg["options"]["box_frame"] = "square"
    with pytest.raises(DataError, match=r"data.options.box_frame='square'; valid: original, padded_square, resized"):
        load_split(cfg, "train", task="grounding")
