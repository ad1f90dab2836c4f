"""Synthetic tasks: determinism, disjoint splits, ground truth that matches the pixels."""

from __future__ import annotations

import hashlib
import re
from collections import deque

import datasets
import numpy as np
import pytest
from PIL import Image

from perpo.data import TASKS, features_for, make_records, make_splits, preview_grid, validate_record
from perpo.data.synthetic import BACKGROUND, PALETTE, PLURALS, SHAPES, iter_samples


def _raw_images(ds: datasets.Dataset) -> list[bytes]:
    return [im["bytes"] for im in ds.cast_column("image", datasets.Image(decode=False))["image"]]


def _pixel_digests(ds: datasets.Dataset) -> set[bytes]:
    return {hashlib.sha1(np.asarray(im.convert("RGB")).tobytes()).digest() for im in ds["image"]}


def _colour_mask(image: Image.Image, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(np.asarray(image.convert("RGB")) == np.array(colour, dtype=np.uint8), axis=-1)


def _components(mask: np.ndarray) -> int:
    """Number of 8-connected components of a boolean mask."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    count = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        count += 1
        seen[y0, x0] = True
        queue = deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                        seen[yy, xx] = True
                        queue.append((yy, xx))
    return count


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


# --------------------------------------------------------------------------- schema / determinism


@pytest.mark.parametrize("task", TASKS)
def test_records_schema_and_ids(task):
    ds = make_records(task, 5, seed=3)
    assert ds.features == features_for(task)
    assert ds["id"] == [f"{task}-3-{i:06d}" for i in range(5)]
    for rec in ds:
        assert rec["task"] == task
        assert rec["image"].mode == "RGB" and rec["image"].size == (64, 64)
        assert (rec["width"], rec["height"]) == (64, 64)
        assert validate_record(rec) is None
    assert make_records(task, 3, seed=1, image_size=48)[0]["image"].size == (48, 48)
    assert len(make_records(task, 0, seed=1)) == 0


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_identical_different_seed_different(task):
    a, b, c = make_records(task, 30, seed=7), make_records(task, 30, seed=7), make_records(task, 30, seed=8)
    assert _raw_images(a) == _raw_images(b)
    for col in ("id", "prompt", "target", "width", "height"):
        assert a[col] == b[col]
    assert _raw_images(a) != _raw_images(c)
    assert len(set(_raw_images(a)) & set(_raw_images(c))) <= 1  # chance repeats are rare


@pytest.mark.parametrize("task", TASKS)
def test_splits_disjoint_and_stable(task):
    sizes = {"train": 200, "val": 50, "test": 200}
    dd = make_splits(task, sizes, seed=11)
    assert list(dd) == ["train", "val", "test"]
    assert {k: len(v) for k, v in dd.items()} == sizes
    train, val, test = (_pixel_digests(dd[k]) for k in ("train", "val", "test"))
    assert not train & test and not train & val and not val & test
    ids = [i for split in dd.values() for i in split["id"]]
    assert len(ids) == len(set(ids))
    # the test split does not depend on the other splits' sizes; other seeds differ
    alone = make_splits(task, {"test": 200}, seed=11)
    assert _raw_images(alone["test"]) == _raw_images(dd["test"])
    assert _raw_images(make_splits(task, {"test": 20}, seed=12)["test"]) != _raw_images(dd["test"])[:20]


# --------------------------------------------------------------------------- grounding


def test_grounding_box_matches_drawn_pixels():
    ds = make_records("grounding", 150, seed=5)
    samples = list(iter_samples("grounding", 150, seed=5))
    fills = {s: [] for s in SHAPES}
    for rec, sample in zip(ds, samples):
        colour_name, shape = re.fullmatch(r"the (\w+) (\w+)", rec["prompt"]).groups()
        assert colour_name in PALETTE and shape in SHAPES
        x1, y1, x2, y2 = (int(round(v * 64)) for v in rec["target"])
        assert np.allclose(np.array(rec["target"]) * 64, [x1, y1, x2, y2], atol=1e-4)
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
        mask = _colour_mask(rec["image"], PALETTE[colour_name])
        inside = mask[y1:y2, x1:x2]
        # the target colour touches all four edges of the box
        assert inside[0, :].any() and inside[-1, :].any() and inside[:, 0].any() and inside[:, -1].any()
        # every pixel of that colour outside the box belongs to another shape of that colour
        outside = mask.copy()
        outside[y1:y2, x1:x2] = False
        for obj in sample.objects:
            if obj["colour"] == colour_name and obj is not sample.objects[sample.target_index]:
                bx1, by1, bx2, by2 = obj["box"]
                outside[by1:by2, bx1:bx2] = False
        assert not outside.any()
        same_colour = sum(o["colour"] == colour_name for o in sample.objects)
        if same_colour == 1:
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, x2, y2)
        fills[shape].append(inside.mean())
    # the drawn shape is the named one: squares fill their box, circles ~pi/4, triangles ~1/2
    assert min(fills["square"]) > 0.97
    assert 0.65 < np.mean(fills["circle"]) < 0.9
    assert 0.4 < np.mean(fills["triangle"]) < 0.65


def test_grounding_unique_pairs_and_separation():
    counts = set()
    for sample in iter_samples("grounding", 300, seed=2):
        pairs = [(o["colour"], o["shape"]) for o in sample.objects]
        assert len(pairs) == len(set(pairs))
        counts.add(len(pairs))
        for i, a in enumerate(sample.objects):
            w = a["box"][2] - a["box"][0]
            assert 0.2 * 64 - 1 <= w <= 0.5 * 64 + 1
            for b in sample.objects[i + 1 :]:
                assert _iou(a["box"], b["box"]) < 0.1
        t = sample.objects[sample.target_index]
        assert sample.prompt == f"the {t['colour']} {t['shape']}"
    assert counts == {1, 2, 3}


def test_grounding_num_shapes_range_honoured():
    counts = [len(s.objects) for s in iter_samples("grounding", 200, seed=4, num_shapes=(2, 4), max_size=0.35)]
    assert set(counts) == {2, 3, 4}
    assert {len(s.objects) for s in iter_samples("grounding", 20, seed=4, num_shapes=1)} == {1}


# --------------------------------------------------------------------------- counting


def test_counting_target_equals_drawn_objects():
    ds = make_records("counting", 120, seed=9)
    samples = list(iter_samples("counting", 120, seed=9))
    seen_counts = set()
    for rec, sample in zip(ds, samples):
        kind = sample.meta["kind"]
        assert rec["prompt"] == PLURALS[kind]
        assert 0 <= rec["target"] <= 5
        seen_counts.add(rec["target"])
        img = rec["image"]
        # objects of the asked kind share one colour that no other kind uses in this image
        assert _components(_colour_mask(img, PALETTE[sample.meta["colour"]])) == rec["target"]
        assert sum(o["shape"] == kind for o in sample.objects) == rec["target"]
        distractors = [o for o in sample.objects if o["shape"] != kind]
        assert len(distractors) <= 3
        assert rec["target"] > 0 or distractors  # never a blank image
        foreground = ~_colour_mask(img, BACKGROUND)
        assert _components(foreground) == len(sample.objects)
        for o in sample.objects:
            w = o["box"][2] - o["box"][0]
            assert 0.12 * 64 - 1 <= w <= 0.18 * 64 + 1
    assert seen_counts == set(range(6))


def test_counting_options():
    samples = list(iter_samples("counting", 60, seed=1, count=(2, 3), kinds=("square",), max_distractors=2))
    for s in samples:
        assert s.prompt == "squares" and s.target in (2, 3)
        assert all(o["shape"] == "square" for o in s.objects)  # no other kind to distract with


# --------------------------------------------------------------------------- ocr


def test_ocr_text_fits_and_matches_target():
    line_counts = set()
    for opts in ({}, {"num_words": (1, 3)}, {"num_words": 2, "word_len": 6}):
        ds = make_records("ocr", 80, seed=6, **opts)
        samples = list(iter_samples("ocr", 80, seed=6, **opts))
        for rec, sample in zip(ds, samples):
            assert rec["prompt"] == ""
            text = rec["target"]
            assert re.fullmatch(r"[a-z]+( [a-z]+)*", text)
            assert " ".join(sample.lines) == text and 1 <= len(sample.lines) <= 2
            words = text.split(" ")
            if not opts:
                assert len(words) == 1 and 3 <= len(words[0]) <= 5
            if opts.get("num_words") == (1, 3):
                assert 1 <= len(words) <= 3 and all(3 <= len(w) <= 5 for w in words)
            if "word_len" in opts:
                assert len(words) == 2 and all(len(w) == 6 for w in words)
            ink = np.asarray(rec["image"].convert("L")) > 0
            assert ink.any()
            assert not (ink[0].any() or ink[-1].any() or ink[:, 0].any() or ink[:, -1].any())
            assert sample.font_size >= 8  # legible
            line_counts.add(len(sample.lines))
    assert line_counts == {1, 2}  # long texts wrap onto a second line


# --------------------------------------------------------------------------- validate_record


def _good(task):
    return dict(make_records(task, 1, seed=0)[0])


@pytest.mark.parametrize(
    "task, change",
    [
        ("grounding", {"image": None}),
        ("grounding", {"image": {"bytes": b"", "path": None}}),
        ("grounding", {"image": Image.new("RGB", (0, 0))}),
        ("grounding", {"width": 0}),
        ("grounding", {"height": -3}),
        ("grounding", {"target": [0.1, 0.2, 0.3]}),
        ("grounding", {"target": [0.1, 0.2, float("nan"), 0.5]}),
        ("grounding", {"target": [0.1, 0.2, "x", 0.5]}),
        ("grounding", {"target": [0.1, 0.2, 1.2, 0.5]}),
        ("grounding", {"target": [-0.1, 0.2, 0.3, 0.5]}),
        ("grounding", {"target": [0.5, 0.2, 0.5, 0.6]}),
        ("grounding", {"target": [0.1, 0.6, 0.5, 0.2]}),
        ("grounding", {"prompt": ""}),
        ("grounding", {"task": "caption"}),
        ("ocr", {"target": ""}),
        ("ocr", {"target": "   "}),
        ("counting", {"target": -1}),
        ("counting", {"target": 1.5}),
    ],
)
def test_validate_record_catches_bad_records(task, change):
    record = {**_good(task), **change}
    reason = validate_record(record)
    assert isinstance(reason, str) and reason


def test_validate_record_missing_column_and_good_forms():
    record = _good("grounding")
    del record["target"]
    assert "target" in validate_record(record)
    assert validate_record({**_good("counting"), "target": 0}) is None
    raw = make_records("ocr", 1, seed=0).cast_column("image", datasets.Image(decode=False))[0]
    assert validate_record(raw) is None


# --------------------------------------------------------------------------- errors, preview


def test_unknown_option_task_and_split_raise():
    with pytest.raises(ValueError, match=r"'colour'.*valid options: image_size, num_shapes, min_size, max_size"):
        make_records("grounding", 2, seed=0, colour="red")
    with pytest.raises(ValueError, match=r"'num_shapes'.*valid options: image_size, count, kinds, max_distractors"):
        make_splits("counting", {"train": 2}, seed=0, num_shapes=2)
    with pytest.raises(ValueError, match=r"'caption'.*grounding, ocr, counting"):
        make_records("caption", 2, seed=0)
    with pytest.raises(ValueError, match=r"'dev'.*train, val, test"):
        make_splits("ocr", {"dev": 2}, seed=0)
    with pytest.raises(ValueError, match="kinds"):
        make_records("counting", 2, seed=0, kinds=("hexagon",))
    with pytest.raises(ValueError, match="num_shapes"):
        make_records("grounding", 2, seed=0, num_shapes=(3, 1))
    with pytest.raises(ValueError, match="caption"):
        features_for("caption")


def test_preview_grid_size():
    ds = make_records("grounding", 10, seed=1)
    grid = preview_grid(ds, n=16)  # capped at len(ds): 10 cells, 4 columns, 3 rows
    assert isinstance(grid, Image.Image)
    assert grid.size == (4 * 128, 3 * (128 + 24))
    assert preview_grid(make_records("ocr", 4, seed=1), n=4, scale=1).size == (2 * 64, 2 * (64 + 24))


# --------------------------------------------------------------------------- grid layout


def test_ocr_grid_puts_one_letter_per_cell_in_reading_order():
    """grid=4 on 64 px: 16-px cells; each word on its own row, one glyph per cell."""
    samples = list(iter_samples("ocr", 60, seed=3, grid=4, num_words=(1, 2), word_len=(2, 4)))
    assert any(len(s.lines) == 2 for s in samples)
    for s in samples:
        ink = np.asarray(s.image.convert("L")) > 0
        rows = s.meta["rows"]
        assert list(rows) == sorted(set(rows)) and len(rows) == len(s.lines)
        assert s.target == " ".join(s.lines)
        cells = ink.reshape(4, 16, 4, 16).any(axis=(1, 3))  # [row, col] has ink
        for row in range(4):
            word = s.lines[rows.index(row)] if row in rows else ""
            inked = np.flatnonzero(cells[row])
            assert len(inked) == len(word)  # one inked cell per letter: no glyph crosses a border
            if word:
                assert inked.tolist() == list(range(inked[0], inked[0] + len(word)))  # contiguous


def test_counting_grid_keeps_each_object_inside_its_own_cell():
    samples = list(iter_samples("counting", 80, seed=4, grid=4))
    for s in samples:
        cells = set()
        for o in s.objects:
            x1, y1, x2, y2 = o["box"]
            cell = (x1 // 16, y1 // 16)
            assert ((x2 - 1) // 16, (y2 - 1) // 16) == cell  # inside one cell
            assert 0.55 * 16 - 1 <= x2 - x1 <= 0.85 * 16 + 1
            cells.add(cell)
        assert len(cells) == len(s.objects)  # distinct cells
        assert sum(o["shape"] == s.meta["kind"] for o in s.objects) == s.target


@pytest.mark.parametrize(
    "task,opts,match",
    [
        ("ocr", {"grid": 4, "word_len": 5}, r"at most 4 letters"),
        ("ocr", {"grid": 4, "num_words": (1, 5), "word_len": 2}, r"at most 4 words"),
        ("ocr", {"grid": 16}, r"cells of at least 8 pixels"),
        ("counting", {"grid": 2, "count": (0, 3), "max_distractors": 2}, r"at most 4 objects"),
        ("counting", {"grid": -1}, r"'grid'"),
    ],
)
def test_grid_options_are_validated(task, opts, match):
    with pytest.raises(ValueError, match=match):
        make_records(task, 2, seed=0, **opts)


def test_blank_images_keep_size_and_count_and_are_uniform():
    from perpo.data.blank import BLANK_COLOUR, blank_images

    ds = make_records("grounding", 3, seed=0)
    blank = blank_images(ds)
    assert len(blank) == 3 and blank["id"] == ds["id"] and blank["target"] == ds["target"]
    for before, after in zip(ds["image"], blank["image"]):
        assert after.size == before.size
        assert np.all(np.asarray(after.convert("RGB")) == np.array(BLANK_COLOUR, dtype=np.uint8))


# --------------------------------------------------------------------------- attribute binding


def _needs_binding(sample) -> bool:
    """The image holds another shape of the target's colour and another of its shape."""
    target = sample.objects[sample.target_index]
    others = [o for i, o in enumerate(sample.objects) if i != sample.target_index]
    same_colour = any(o["colour"] == target["colour"] and o["shape"] != target["shape"] for o in others)
    same_shape = any(o["shape"] == target["shape"] and o["colour"] != target["colour"] for o in others)
    return same_colour and same_shape


def test_multishape_grounding_rarely_needs_binding_without_the_option():
    # the multishape experiment's random pairs: colour or shape alone names the target in ~90%
    samples = list(iter_samples("grounding", 300, seed=3, num_shapes=(2, 4)))
    assert sum(map(_needs_binding, samples)) / len(samples) < 0.2


def test_binding_option_every_image_needs_colour_and_shape_together():
    samples = list(iter_samples("grounding", 300, seed=3, num_shapes=(3, 4), binding=True))
    assert all(_needs_binding(s) for s in samples)
    assert {len(s.objects) for s in samples} == {3, 4}
    for s in samples:
        target = s.objects[s.target_index]
        assert s.prompt == f"the {target['colour']} {target['shape']}"
        assert len({(o["colour"], o["shape"]) for o in s.objects}) == len(s.objects)  # pairs stay unique
        assert s.target == [v / 64 for v in target["box"]]
    assert len({s.target_index for s in samples}) == 4  # the target is not always drawn first
    # records validate, and the default (binding off) draws what it drew before the option existed
    ds = make_records("grounding", 5, seed=1, num_shapes=(3, 4), binding=True)
    assert all(validate_record(r) is None for r in ds)
    assert _raw_images(make_records("grounding", 20, seed=9)) == _raw_images(make_records("grounding", 20, seed=9, binding=False))


def test_binding_needs_three_shapes():
    with pytest.raises(ValueError, match="binding.*at least 3 shapes"):
        make_records("grounding", 2, seed=0, num_shapes=(2, 4), binding=True)
    with pytest.raises(ValueError, match="binding.*true or false"):
        make_records("grounding", 2, seed=0, binding="yes")


# --------------------------------------------------------------------------- existence (POPE-style)


def test_existence_answers_match_the_drawn_shapes_and_absent_ones_are_plausible():
    samples = list(iter_samples("existence", 400, seed=2))
    records = make_records("existence", 400, seed=2)
    assert [r["target"] for r in records] == [s.target for s in samples]
    kinds = {None: 0, "binding": 0, "colour": 0, "shape": 0}
    for s in samples:
        article, colour, shape = re.fullmatch(r"(a|an) (\w+) (\w+)", s.prompt).groups()
        assert article == ("an" if colour[0] in "aeiou" else "a")
        pairs = {(o["colour"], o["shape"]) for o in s.objects}
        colours, shapes = {c for c, _ in pairs}, {sh for _, sh in pairs}
        assert s.target == ("yes" if (colour, shape) in pairs else "no")
        assert 2 <= len(s.objects) <= 3
        kinds[s.meta["absent"]] += 1
        if s.target == "yes":
            assert s.objects[s.target_index]["colour"] == colour and s.objects[s.target_index]["shape"] == shape
            assert _colour_mask(s.image, PALETTE[colour]).any()
            continue
        # absent: never a random pair -- it shares the colour of one shape and, whenever two
        # shapes allow it, the shape of another
        assert colour in colours or shape in shapes
        possible = any((c, sh) not in pairs for c in colours for sh in shapes)
        assert (s.meta["absent"] == "binding") == possible
        if possible:
            assert colour in colours and shape in shapes
    assert 0.4 < kinds[None] / len(samples) < 0.6  # half the questions are about absent objects
    assert kinds["binding"] > 0.3 * len(samples)


def test_existence_grid_layout_and_option_errors():
    samples = list(iter_samples("existence", 50, seed=4, grid=4))
    for s in samples:
        cells = {(o["box"][0] // 16, o["box"][1] // 16) for o in s.objects}
        assert len(cells) == len(s.objects)
        assert all(o["box"][2] <= (o["box"][0] // 16 + 1) * 16 for o in s.objects)  # inside its cell
    with pytest.raises(ValueError, match="at most 4 shapes"):
        make_records("existence", 2, seed=0, grid=2, num_shapes=(2, 5))
    with pytest.raises(ValueError, match="'binding'"):
        make_records("existence", 2, seed=0, binding=True)


def test_existence_record_validation():
    rec = make_records("existence", 1, seed=0)[0]
    assert validate_record(rec) is None
    assert "yes' or 'no" in validate_record({**rec, "target": "maybe"})
