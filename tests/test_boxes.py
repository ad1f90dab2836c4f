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
