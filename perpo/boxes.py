"""Box text conventions of model families.

Inside perpo a box is always a normalized ``xyxy`` list of four floats in ``[0, 1]`` (fractions
of the image width / height). A model family writes and reads boxes in its own text
convention; a :class:`BoxFormat` converts between the two, and the rest of the code picks one by
name (``get_box_format(name)``) without branching on the family.

Formats:

====================  =====================================================  ===============
name                  text                                                   coordinates
====================  =====================================================  ===============
``norm`` / ``norm2``  ``[0.12, 0.34, 0.56, 0.78]`` (LLaVA-1.5)               normalized, 2 dp
``norm3``             ``[0.123, 0.345, 0.567, 0.789]``                       normalized, 3 dp
``qwen2vl``           ``<|box_start|>(120,340),(560,780)<|box_end|>``        integers 0-1000
``qwen25vl``          ``[{"bbox_2d": [77, 218, 358, 499]}]``                 image pixels
``int1000``           ``[120, 340, 560, 780]`` (Qwen3-VL style)              integers 0-1000
====================  =====================================================  ===============

A box is also numbers **in a frame** (``model.box_frame``), i.e. fractions of which picture:

=================  ==========================================================================
frame              the box's coordinates are fractions (or pixels) of
=================  ==========================================================================
``original``       the original image (records, lmms-eval's RefCOCO scoring, COCO tools)
``padded_square``  the image padded to a square of side max(w, h), centred (LLaVA-1.5's
                   ``image_aspect_ratio=pad``: ``expand2square``); LLaVA-1.5 learned its
                   RefCOCO / VG boxes in this frame (haotian-liu/LLaVA issues #606, #822)
``resized``        the image as the processor resized it, without padding (Qwen2.5-VL's
                   ``smart_resize``: pixel formats use ``box_width`` / ``box_height``);
                   as fractions it equals ``original``
=================  ==========================================================================

Records hold targets in the ``original`` frame. :func:`to_frame` / :func:`from_frame` are the one
conversion: prompts' answers are written in the model's frame, and every reader (reward,
metric, drawing, predictions) converts what it parsed back to ``original``.

Parsing is lenient and never raises on any string: words around the box are ignored, the first
of several boxes wins, swapped corners are reordered (``x1 <= x2``, ``y1 <= y2``), values are
clipped to the image, and ``None`` means no box could be read (no four numbers in a box-like
layout, or non-finite numbers such as ``1e309`` / ``nan``).

Implementation note: numbers are first tokenized with one linear regex scan, then the first run
of four numbers separated only by box punctuation is taken. There is no backtracking-heavy
pattern, so adversarial strings (long digit runs, many brackets) stay linear in time.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Sequence

__all__ = [
    "BoxFormat",
    "NormalizedBoxFormat",
    "Qwen2VLBoxFormat",
    "Qwen25VLBoxFormat",
    "Int1000BoxFormat",
    "BOX_FORMATS",
    "register_box_format",
    "get_box_format",
    "box_iou",
    "box_giou",
    "BOX_FRAMES",
    "to_frame",
    "from_frame",
    "write_box",
    "read_box",
]

Box = list[float]

# An unambiguous number: sign, digits with optional fraction (or a bare fraction), exponent.
_NUM_RE = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
# What may separate two coordinates of one box: a comma (optionally closing one point and opening
# the next, as in "(x1,y1),(x2,y2)"), or plain whitespace.
_GAP_RE = re.compile(r"\s*[)\]]?\s*,\s*[(\[]?\s*|\s+")


def _finite_float(token: str) -> float | None:
    try:
        value = float(token)
    except (ValueError, OverflowError):  # pragma: no cover - the regex only yields valid floats
        return None
    return value if math.isfinite(value) else None


def _find_quad(text: str, start: int = 0) -> list[float] | None:
    """The first four finite numbers in ``text[start:]`` separated only by box punctuation."""
    matches = list(_NUM_RE.finditer(text, start))
    for i in range(len(matches) - 3):
        group = matches[i : i + 4]
        if not all(_GAP_RE.fullmatch(text, a.end(), b.start()) for a, b in zip(group, group[1:])):
            continue
        values = [_finite_float(m.group()) for m in group]
        if any(v is None for v in values):
            continue
        return values  # type: ignore[return-value]
    return None


def _clip01(v: float) -> float:
    return min(1.0, max(0.0, float(v)))


def _canonical(x1: float, y1: float, x2: float, y2: float) -> Box:
    """Reorder corners and clip to the unit square."""
    x1, x2 = sorted((_clip01(x1), _clip01(x2)))
    y1, y2 = sorted((_clip01(y1), _clip01(y2)))
    return [x1, y1, x2, y2]


def _check_size(width, height) -> tuple[float, float]:
    try:
        w, h = float(width), float(height)
    except (TypeError, ValueError):
        raise ValueError(f"this box format needs the image size; got width={width!r}, height={height!r}") from None
    if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
        raise ValueError(f"image size must be positive, got width={width!r}, height={height!r}")
    return w, h


class BoxFormat:
    """Converts a normalized xyxy box to / from a model family's box text.

    Subclasses set ``scale`` handling by overriding :meth:`_to_units` / :meth:`_from_units` and
    :meth:`format`; parsing is shared.
    """

    name: str = "base"
    absolute: bool = False  # coordinates in pixels: needs the size of the image the model sees

    def format(self, box: Sequence[float], width: int | None = None, height: int | None = None) -> str:
        raise NotImplementedError

    def parse(self, text: str, width: int | None = None, height: int | None = None) -> Box | None:
        """Normalized xyxy box read from ``text``, or ``None``. Never raises on any string."""
        if not isinstance(text, str) or not text:
            return None
        scale = self._scale(width, height)
        try:
            quad = self._find(text)
        except Exception:  # defensive: model output must never crash the caller
            return None
        if quad is None:
            return None
        sx, sy = scale
        x1, y1, x2, y2 = quad
        return _canonical(x1 / sx, y1 / sy, x2 / sx, y2 / sy)

    # -- hooks -----------------------------------------------------------------------------
    def _scale(self, width, height) -> tuple[float, float]:
        """Divisors that turn text units into normalized coordinates."""
        return (1.0, 1.0)

    def _find(self, text: str) -> list[float] | None:
        return _find_quad(text)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NormalizedBoxFormat(BoxFormat):
    """LLaVA-1.5 style: ``[0.12, 0.34, 0.56, 0.78]``, normalized, ``decimals`` decimal places."""

    name = "norm"

    def __init__(self, decimals: int = 2):
        if not isinstance(decimals, int) or decimals < 0:
            raise ValueError(f"decimals must be a non-negative int, got {decimals!r}")
        self.decimals = decimals

    def format(self, box, width=None, height=None) -> str:
        x1, y1, x2, y2 = _canonical(*box)
        return "[" + ", ".join(f"{v:.{self.decimals}f}" for v in (x1, y1, x2, y2)) + "]"

    def __repr__(self) -> str:
        return f"NormalizedBoxFormat(decimals={self.decimals})"


def _ints1000(box) -> list[int]:
    return [int(round(v * 1000)) for v in _canonical(*box)]


class Qwen2VLBoxFormat(BoxFormat):
    """Qwen2-VL: ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>`` with integers 0-1000.

    Parsing also accepts the bare ``(x1,y1),(x2,y2)`` and prefers the text after the first
    ``<|box_start|>`` when there is one.
    """

    name = "qwen2vl"

    def format(self, box, width=None, height=None) -> str:
        x1, y1, x2, y2 = _ints1000(box)
        return f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"

    def _scale(self, width, height):
        return (1000.0, 1000.0)

    def _find(self, text):
        pos = text.find("<|box_start|>")
        if pos >= 0:
            quad = _find_quad(text, pos)
            if quad is not None:
                return quad
        return _find_quad(text)


class Qwen25VLBoxFormat(BoxFormat):
    """Qwen2.5-VL: absolute pixels as JSON ``[{"bbox_2d": [x1, y1, x2, y2]}]``.

    Parsing also accepts a bare ``[x1, y1, x2, y2]`` of pixel numbers and JSON inside
    ```` ```json ```` fences; the numbers after the first ``bbox_2d`` key are preferred.
    ``width`` and ``height`` (pixels) are required by both directions.
    """

    name = "qwen25vl"
    absolute = True

    def format(self, box, width=None, height=None) -> str:
        w, h = _check_size(width, height)
        x1, y1, x2, y2 = _canonical(*box)
        pixels = [int(round(x1 * w)), int(round(y1 * h)), int(round(x2 * w)), int(round(y2 * h))]
        return json.dumps([{"bbox_2d": pixels}])

    def _scale(self, width, height):
        return _check_size(width, height)

    def _find(self, text):
        pos = text.find("bbox_2d")
        if pos >= 0:
            quad = _find_quad(text, pos)
            if quad is not None:
                return quad
        return _find_quad(text)


class Int1000BoxFormat(BoxFormat):
    """Qwen3-VL style: ``[x1, y1, x2, y2]`` with integers 0-1000."""

    name = "int1000"

    def format(self, box, width=None, height=None) -> str:
        return "[" + ", ".join(str(v) for v in _ints1000(box)) + "]"

    def _scale(self, width, height):
        return (1000.0, 1000.0)


# -- registry ----------------------------------------------------------------------------------

BOX_FORMATS: dict[str, Callable[..., BoxFormat]] = {}


def register_box_format(name: str, factory: Callable[..., BoxFormat]) -> Callable[..., BoxFormat]:
    """Register ``factory(**kwargs) -> BoxFormat`` under ``name``."""
    if name in BOX_FORMATS:
        raise ValueError(f"box format {name!r} is already registered")
    BOX_FORMATS[name] = factory
    return factory


register_box_format("norm", NormalizedBoxFormat)
register_box_format("norm2", functools.partial(NormalizedBoxFormat, decimals=2))
register_box_format("norm3", functools.partial(NormalizedBoxFormat, decimals=3))
register_box_format("qwen2vl", Qwen2VLBoxFormat)
register_box_format("qwen25vl", Qwen25VLBoxFormat)
register_box_format("int1000", Int1000BoxFormat)


def get_box_format(name: str, **kwargs) -> BoxFormat:
    """The box format registered as ``name`` (e.g. ``"norm2"``, ``"qwen25vl"``)."""
    try:
        factory = BOX_FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown box format {name!r}; known: {', '.join(sorted(BOX_FORMATS))}") from None
    return factory(**kwargs)


# -- geometry ----------------------------------------------------------------------------------


def _area(box: Sequence[float]) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two xyxy boxes; 0.0 when either box has zero area."""
    area_a, area_b = _area(a), _area(b)
    if area_a <= 0.0 or area_b <= 0.0:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = area_a + area_b - inter
    if union <= 0.0:  # pragma: no cover - positive areas imply a positive union
        return 0.0
    return min(1.0, max(0.0, inter / union))


def box_giou(a: Sequence[float], b: Sequence[float]) -> float:
    """Generalized IoU (Rezatofighi et al. 2019) in [-1, 1].

    ``IoU - (C - U) / C`` with ``C`` the area of the smallest enclosing box and ``U`` the union.
    IoU follows :func:`box_iou` (zero-area boxes have IoU 0). If the enclosing box itself has
    zero area (both boxes degenerate on one line / point) the result is -1.0, the worst value.
    """
    iou = box_iou(a, b)
    enclosing = _area([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])])
    if enclosing <= 0.0:
        return -1.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = _area(a) + _area(b) - inter
    return min(1.0, max(-1.0, iou - (enclosing - union) / enclosing))


# -- frames ------------------------------------------------------------------------------------

BOX_FRAMES = ("original", "padded_square", "resized")


def _square_offsets(width, height) -> tuple[float, float, float, float, float]:
    """(side, x offset, y offset, width, height) of the image pasted centred into its padded
    square, in pixels."""
    w, h = _check_size(width, height)
    side = max(w, h)
    return side, (side - w) / 2.0, (side - h) / 2.0, w, h


def _check_frame(frame: str) -> None:
    if frame not in BOX_FRAMES:
        raise ValueError(f"unknown box frame {frame!r} (model.box_frame); known: {', '.join(BOX_FRAMES)}")


def to_frame(box: Sequence[float], frame: str, width=None, height=None) -> Box:
    """A normalized xyxy box of the original image as fractions of ``frame``'s picture.

    ``padded_square`` needs the original image size: x' = (x w + (s - w) / 2) / s with s = max(w, h)."""
    _check_frame(frame)
    if frame != "padded_square":
        return [float(v) for v in box]
    side, dx, dy, w, h = _square_offsets(width, height)
    x1, y1, x2, y2 = box
    return [(x1 * w + dx) / side, (y1 * h + dy) / side, (x2 * w + dx) / side, (y2 * h + dy) / side]


def from_frame(box: Sequence[float], frame: str, width=None, height=None) -> Box:
    """The inverse of :func:`to_frame`: fractions of ``frame``'s picture -> of the original image
    (clipped to it: a box in the padding is outside the image)."""
    _check_frame(frame)
    if frame != "padded_square":
        return [float(v) for v in box]
    side, dx, dy, w, h = _square_offsets(width, height)
    x1, y1, x2, y2 = box
    return _canonical((x1 * side - dx) / w, (y1 * side - dy) / h, (x2 * side - dx) / w, (y2 * side - dy) / h)


def write_box(box: Sequence[float], record, box_format: "BoxFormat", frame: str = "original") -> str:
    """The record's original-frame box as the model writes it: in its frame, in its format."""
    return box_format.format(to_frame(box, frame, record.get("width"), record.get("height")), *box_space(record))


def read_box(text: str, record, box_format: "BoxFormat", frame: str = "original") -> Box | None:
    """The box a model wrote, read in its format and frame, as normalized xyxy of the original
    image; ``None`` when no box can be read. Never raises on model output."""
    box = box_format.parse(text, *box_space(record))
    if box is None:
        return None
    return from_frame(box, frame, record.get("width"), record.get("height"))


def box_space(record) -> tuple[int | None, int | None]:
    """The (width, height) that pixel box coordinates of ``record`` refer to: ``box_width`` /
    ``box_height`` when set (the image as the model sees it after resizing, e.g. Qwen2.5-VL's
    smart resize), else the record's own ``width`` / ``height``."""
    w = record.get("box_width") or record.get("width")
    h = record.get("box_height") or record.get("height")
    return w, h

