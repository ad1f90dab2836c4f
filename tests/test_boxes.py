"""Box text formats: round trips, lenient parsing, robustness, IoU / GIoU geometry."""

import math
import random

import pytest

from perpo.boxes import (
    BOX_FORMATS,
    BoxFormat,
    NormalizedBoxFormat,
    box_giou,
    box_iou,
    get_box_format,
)

W, H = 640, 480
ALL_FORMATS = sorted(BOX_FORMATS)


def test_registry_names():
    assert set(ALL_FORMATS) == {"norm", "norm2", "norm3", "qwen2vl", "qwen25vl", "int1000"}
    assert get_box_format("norm2").decimals == 2
    assert get_box_format("norm3").decimals == 3
    assert get_box_format("norm").decimals == 2
    assert get_box_format("norm", decimals=4).decimals == 4
    assert isinstance(get_box_format("qwen25vl"), BoxFormat)


def test_unknown_format_lists_known():
    with pytest.raises(ValueError, match="qwen25vl") as err:
        get_box_format("yolo")
    assert "yolo" in str(err.value)


@pytest.mark.parametrize("name", ALL_FORMATS)
@pytest.mark.parametrize(
    "box", [[0.125, 0.2, 0.5, 0.75], [0.0, 0.0, 1.0, 1.0], [0.3333, 0.1111, 0.6667, 0.9999]]
)
def test_round_trip(name, box):
    fmt = get_box_format(name)
    text = fmt.format(box, W, H)
    parsed = fmt.parse(text, W, H)
    assert parsed is not None
    # rounding tolerance of the format: 2 decimals -> 0.005, 3 -> 0.0005, ints of 1000 -> 0.0005,
    # pixels -> half a pixel
    tol = {"norm": 0.005, "norm2": 0.005, "norm3": 0.0005, "qwen2vl": 0.0005, "int1000": 0.0005}.get(
        name, 0.5 / min(W, H)
    )
    assert all(abs(a - b) <= tol + 1e-12 for a, b in zip(parsed, box))
    assert box_iou(parsed, box) == pytest.approx(1.0, abs=0.05)


def test_format_texts():
    box = [0.12, 0.34, 0.56, 0.78]
    assert get_box_format("norm2").format(box) == "[0.12, 0.34, 0.56, 0.78]"
    assert get_box_format("norm3").format(box) == "[0.120, 0.340, 0.560, 0.780]"
    assert get_box_format("qwen2vl").format(box) == "<|box_start|>(120,340),(560,780)<|box_end|>"
    assert get_box_format("int1000").format(box) == "[120, 340, 560, 780]"
    assert get_box_format("qwen25vl").format([0.125, 0.2, 0.5, 0.75], W, H) == '[{"bbox_2d": [80, 96, 320, 360]}]'


def test_norm2_rounding_of_eighth():
    parsed = get_box_format("norm2").parse(get_box_format("norm2").format([0.125, 0.375, 0.625, 0.875]))
    assert all(abs(a - b) <= 0.005 + 1e-12 for a, b in zip(parsed, [0.125, 0.375, 0.625, 0.875]))


def test_lenient_prefix_and_suffix_words():
    fmt = get_box_format("norm2")
    assert fmt.parse("Sure! The region is [0.1, 0.2, 0.3, 0.4]. Hope it helps.") == [0.1, 0.2, 0.3, 0.4]
    assert fmt.parse("0.1 0.2 0.3 0.4") == [0.1, 0.2, 0.3, 0.4]
    assert fmt.parse("(0.1,0.2),(0.3,0.4)") == [0.1, 0.2, 0.3, 0.4]


def test_two_boxes_first_wins():
    assert get_box_format("norm2").parse("[0.1, 0.2, 0.3, 0.4] or [0.5, 0.5, 0.9, 0.9]") == [0.1, 0.2, 0.3, 0.4]
    assert get_box_format("int1000").parse("[100, 200, 300, 400], [500, 500, 900, 900]") == [0.1, 0.2, 0.3, 0.4]


def test_swapped_corners_reordered():
    assert get_box_format("norm2").parse("[0.5, 0.6, 0.1, 0.2]") == [0.1, 0.2, 0.5, 0.6]
    assert get_box_format("qwen2vl").parse("<|box_start|>(900,100),(100,900)<|box_end|>") == [0.1, 0.1, 0.9, 0.9]


def test_values_clipped_to_image():
    assert get_box_format("norm2").parse("[-0.2, 0.5, 1.7, 3]") == [0.0, 0.5, 1.0, 1.0]
    assert get_box_format("qwen25vl").parse("[-10, 0, 700, 240]", W, H) == [0.0, 0.0, 1.0, 0.5]


def test_qwen2vl_bare_points():
    fmt = get_box_format("qwen2vl")
    assert fmt.parse("(100,200),(300,400)") == [0.1, 0.2, 0.3, 0.4]
    assert fmt.parse("the dog: <|box_start|>(100, 200), (300, 400)<|box_end|>") == [0.1, 0.2, 0.3, 0.4]


def test_qwen25vl_json_variants():
    fmt = get_box_format("qwen25vl")
    fenced = '```json\n[\n  {"label": "car 2", "bbox_2d": [64, 48, 320, 240]}\n]\n```'
    assert fmt.parse(fenced, W, H) == [0.1, 0.1, 0.5, 0.5]
    assert fmt.parse('[{"bbox_2d": [64, 48, 320, 240]}]', W, H) == [0.1, 0.1, 0.5, 0.5]
    assert fmt.parse("[64, 48, 320, 240]", W, H) == [0.1, 0.1, 0.5, 0.5]
    two = '[{"bbox_2d": [64, 48, 320, 240]}, {"bbox_2d": [0, 0, 640, 480]}]'
    assert fmt.parse(two, W, H) == [0.1, 0.1, 0.5, 0.5]


def test_qwen25vl_needs_size():
    with pytest.raises(ValueError):
        get_box_format("qwen25vl").format([0, 0, 1, 1])


@pytest.mark.parametrize("name", ALL_FORMATS)
@pytest.mark.parametrize(
    "text",
    ["", "garbage", "no box here", "[0.1, 0.2, 0.3]", "[a, b, c, d]", "[1e309, nan, 0.2, 0.3]", "[nan, nan, nan, nan]"],
)
def test_unreadable_gives_none(name, text):
    assert get_box_format(name).parse(text, W, H) is None


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_huge_and_weird_values_never_raise(name):
    fmt = get_box_format(name)
    for text in ["[1e309, 1e309, 1e309, 1e309]", "[1e300, 0.1, 0.2, 0.3]", "[" + "9" * 5000 + ", 1, 2, 3]",
                 "[-inf, inf, nan, 0]", "[٣, ٤, ٥, ٦]", "\x00[0.1,\x000.2]", "((((((((", "1" * 100000]:
        out = fmt.parse(text, W, H)
        assert out is None or (len(out) == 4 and all(0.0 <= v <= 1.0 for v in out))
    assert fmt.parse(None, W, H) is None  # type: ignore[arg-type]


def test_fuzz_random_strings_never_raise():
    rng = random.Random(0)
    alphabet = "0123456789.,-+eE[](){}<>|_ \n\"':bbox_2dnaif" + "ÄΩ中🙂"
    formats = [get_box_format(n) for n in ALL_FORMATS]
    parsed = 0
    for _ in range(1500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        for fmt in formats:
            out = fmt.parse(text, W, H)
            if out is not None:
                parsed += 1
                x1, y1, x2, y2 = out
                assert 0.0 <= x1 <= x2 <= 1.0 and 0.0 <= y1 <= y2 <= 1.0
                assert all(math.isfinite(v) for v in out)
    assert parsed > 0  # the fuzz does reach the parsing path


def test_normalized_decimals_validation():
    with pytest.raises(ValueError):
        NormalizedBoxFormat(decimals=-1)


# -- geometry ---------------------------------------------------------------------------------


def test_iou_hand_values():
    a = [0.0, 0.0, 0.5, 0.5]
    assert box_iou(a, a) == 1.0
    assert box_iou(a, [0.6, 0.6, 0.9, 0.9]) == 0.0
    # unit-width boxes shifted by half: inter 0.5, union 1.5
    assert box_iou([0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5]) == pytest.approx(1 / 3)
    # containment: area ratio
    assert box_iou([0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]) == pytest.approx(0.25)
    # touching edges: no overlap
    assert box_iou([0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5]) == 0.0


def test_iou_zero_area():
    point = [0.3, 0.3, 0.3, 0.3]
    line = [0.1, 0.2, 0.1, 0.8]
    assert box_iou(point, point) == 0.0
    assert box_iou(point, [0.0, 0.0, 1.0, 1.0]) == 0.0
    assert box_iou(line, line) == 0.0


def test_giou_hand_values():
    a = [0.0, 0.0, 0.5, 0.5]
    assert box_giou(a, a) == 1.0
    # touching: IoU 0, enclosing = union -> 0
    assert box_giou(a, [0.5, 0.0, 1.0, 0.5]) == pytest.approx(0.0)
    # diagonal corners: IoU 0, union 0.5, enclosing 1 -> -0.5
    assert box_giou(a, [0.5, 0.5, 1.0, 1.0]) == pytest.approx(-0.5)
    far = box_giou([0.0, 0.0, 0.1, 0.1], [0.9, 0.9, 1.0, 1.0])
    near = box_giou([0.0, 0.0, 0.1, 0.1], [0.1, 0.0, 0.2, 0.1])
    assert -1.0 <= far < near
    assert box_giou([0.3, 0.3, 0.3, 0.3], [0.3, 0.3, 0.3, 0.3]) == -1.0  # degenerate enclosure


# -- frames: which picture the box numbers are fractions of ------------------------------------
# A 200 x 100 image (w > h). Padded to a 200 x 200 square, the image sits 50 px down (centred):
#   y' = (y * 100 + 50) / 200, x' = x. The original box [0.25, 0.2, 0.75, 0.6] becomes
#   [0.25, 0.35, 0.75, 0.55] in the padded square. Read in the wrong frame (original), that text
#   is [0.25, 0.35, 0.75, 0.55] of the image: overlap in y 0.35-0.55 (0.2) over union 0.2-0.6
#   (0.4), x identical -> IoU 0.5.
WIDE = {"id": "wide", "width": 200, "height": 100, "target": [0.25, 0.2, 0.75, 0.6]}


def test_padded_square_frame_by_hand():
    from perpo.boxes import from_frame, to_frame

    assert to_frame(WIDE["target"], "padded_square", 200, 100) == pytest.approx([0.25, 0.35, 0.75, 0.55])
    assert from_frame([0.25, 0.35, 0.75, 0.55], "padded_square", 200, 100) == pytest.approx(WIDE["target"])
    # a tall image pads left and right: 100 x 200 -> x' = (x * 100 + 50) / 200
    assert to_frame([0.0, 0.0, 1.0, 1.0], "padded_square", 100, 200) == pytest.approx([0.25, 0.0, 0.75, 1.0])
    for frame in ("original", "resized"):  # as fractions, resizing without padding changes nothing
        assert to_frame(WIDE["target"], frame, 200, 100) == pytest.approx(WIDE["target"])


def test_right_frame_gives_iou_1_wrong_frame_less():
    """The family writes its answer in its frame; the reward, the metric and the predictions
    read it back in that frame. Read in another frame, the same answer scores 0.5."""
    from perpo.evaluation.metrics import TaskMetrics
    from perpo.prompting import ChatFamily, TaskSpec
    from perpo.rewards import get_reward

    task = TaskSpec("grounding", "{prompt}", 16)
    llava = ChatFamily(None, "norm2", box_frame="padded_square")
    text = llava.answer_text(WIDE, task)
    assert text == "[0.25, 0.35, 0.75, 0.55]"
    iou = get_reward("iou")
    assert iou(text, WIDE, box_format="norm2", box_frame="padded_square") == pytest.approx(1.0)
    assert iou(text, WIDE, box_format="norm2", box_frame="original") == pytest.approx(0.5)
    right = TaskMetrics("grounding", box_format="norm2", box_frame="padded_square", sync_on_compute=False)
    wrong = TaskMetrics("grounding", box_format="norm2", box_frame="original", sync_on_compute=False)
    right.update([text], [WIDE])
    wrong.update([text], [WIDE])
    assert right.compute()["miou"] == pytest.approx(1.0) and right.compute()["acc@0.5"] == 1.0
    assert wrong.compute()["miou"] == pytest.approx(0.5)


def test_pixel_format_in_the_resized_frame_reads_back_to_the_original():
    """Qwen2.5-VL: pixels of the resized image (box_width x box_height = 224 x 112 here)."""
    from perpo.prompting import ChatFamily, TaskSpec
    from perpo.rewards import get_reward

    record = {**WIDE, "box_width": 224, "box_height": 112}
    text = ChatFamily(None, "qwen25vl", box_frame="resized").answer_text(record, TaskSpec("grounding", "{prompt}", 32))
    assert text == '[{"bbox_2d": [56, 22, 168, 67]}]'  # 0.25*224, 0.2*112=22.4, 0.75*224, 0.6*112=67.2
    assert get_reward("iou")(text, record, box_format="qwen25vl", box_frame="resized") > 0.98


def test_predictions_carry_the_box_in_the_original_frame():
    from perpo.evaluation.loop import prediction_row
    from perpo.prompting import ChatFamily, TaskSpec

    row = prediction_row(WIDE, "[0.25, 0.35, 0.75, 0.55]", TaskSpec("grounding", "{prompt}", 16),
                         ChatFamily(None, "norm2", box_frame="padded_square"))  # fmt: skip
    assert row["box"] == pytest.approx(WIDE["target"])
    assert row["box_pixels"] == pytest.approx([50.0, 20.0, 150.0, 60.0])
    assert (row["width"], row["height"]) == (200, 100)
    assert prediction_row(WIDE, "no box", TaskSpec("grounding", "{prompt}", 16), ChatFamily(None, "norm2"))["box"] is None


def test_unknown_frame_is_refused_by_name():
    from perpo.boxes import to_frame

    with pytest.raises(ValueError, match="model.box_frame"):
        to_frame([0, 0, 1, 1], "letterbox", 10, 10)


@pytest.mark.parametrize("family", ["tiny", "llava15", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "idefics3", "smolvlm"])
def test_every_family_states_its_frame_with_a_source(family):
    from pathlib import Path

    from perpo.boxes import BOX_FRAMES

    text = (Path(__file__).resolve().parents[1] / "conf" / "model" / f"{family}.yaml").read_text()
    frame = next(line.split()[1] for line in text.splitlines() if line.startswith("box_frame:"))
    assert frame in BOX_FRAMES
    assert "# box_frame:" in text  # the why, with its source
