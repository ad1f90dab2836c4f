"""perpo.reporting.grounding_errors: discrimination vs localization errors of grounding answers."""

import json

import pytest

from perpo.data.synthetic import make_splits, split_samples
from perpo.reporting.grounding_errors import error_kind, kinds_by_method, kinds_markdown

OPTIONS = {"num_shapes": [3, 4], "binding": True, "grid": 4}
OBJECTS = [{"box": (0, 0, 10, 10)}, {"box": (20, 20, 30, 30)}]  # pixels of a 40-pixel image


@pytest.mark.parametrize(
    ("box", "kind"),
    [
        ([0.0, 0.0, 0.25, 0.25], "hit"),  # the target's box exactly: IoU 1
        ([0.5, 0.5, 0.75, 0.75], "wrong_object"),  # the other object's box
        ([0.0, 0.0, 0.125, 0.25], "hit"),  # the target's left half: IoU 50 / 100 = 0.5 counts
        ([0.0, 0.0, 0.25 / 3, 0.25], "loose"),  # its left third: IoU 1/3, on no other object
        ([0.2, 0.2, 0.6, 0.6], "wrong_object"),  # in pixels 8-24: IoU 4/352 with the target, 16/340 with the other
        ([0.8, 0.0, 1.0, 0.2], "elsewhere"),  # touches nothing
        (None, "no_box"),
    ],
)
def test_error_kind_by_hand(box, kind):
    assert error_kind(box, OBJECTS, 0, 40) == kind


def test_split_samples_are_the_records_objects():
    samples = split_samples("grounding", {"test": 6}, 0, **OPTIONS)["test"]
    records = make_splits("grounding", {"test": 6}, 0, **OPTIONS)["test"]
    for sample, record in zip(samples, records):
        assert record["target"] == pytest.approx(sample.target) and record["prompt"] == sample.prompt
        assert len(sample.objects) in (3, 4) and sample.objects[sample.target_index]["box"]


def _run(folder, loss, boxes):
    folder.mkdir(parents=True)
    config = {"task": {"name": "grounding", "generator": OPTIONS}, "data": {"seed": 0, "sizes": {"test": len(boxes)}, "blank_image": False}}
    (folder / "results.json").write_text(json.dumps({"task": "grounding", "loss": loss, "seed": 1, "config": config}))
    for when in ("before", "after"):
        rows = [{"id": f"grounding-0-test-{i:06d}", "box": b} for i, b in enumerate(boxes)]
        (folder / f"predictions_{when}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_kinds_of_a_run_from_its_regenerated_test_items(tmp_path):
    """Answers built from the regenerated objects: the target's box, another object's box, a sliver
    of the target, and no box -> one of each kind, counted per method."""
    samples = split_samples("grounding", {"test": 4}, 0, **OPTIONS)["test"]

    def norm(box, size=64):
        return [v / size for v in box]

    t = [s.objects[s.target_index]["box"] for s in samples]
    other = samples[1].objects[(samples[1].target_index + 1) % len(samples[1].objects)]["box"]
    sliver = [t[2][0], t[2][1], t[2][0] + 1, t[2][3]]  # one pixel wide: IoU well under 0.5
    _run(tmp_path / "perpo", "perpo", [norm(t[0]), norm(other), norm(sliver), None])
    by_method = kinds_by_method([tmp_path])
    assert by_method["perpo"] == [{"hit": 0.25, "wrong_object": 0.25, "loose": 0.25, "elsewhere": 0.0, "no_box": 0.25}]
    assert by_method["base"] == by_method["perpo"]
    assert "| perpo | 1 | 0.250 | 0.250 | 0.250 | 0.000 | 0.250 |" in kinds_markdown(by_method)
