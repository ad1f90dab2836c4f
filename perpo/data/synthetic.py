"""Deterministic synthetic grounding / OCR / counting / existence tasks.

Every image and record is a pure function of an integer seed (``numpy.random.default_rng``):
the same seed and options give byte-identical images and identical records.

Tasks and their options (keyword only, defaults shown):

``grounding`` -- ``image_size=64, num_shapes=(1, 3), min_size=0.2, max_size=0.5``
    1..3 filled shapes (circle / square / triangle) in colours from :data:`PALETTE` on a
    dark-gray background. Within an image every (colour, shape) pair is unique. Shape
    bounding boxes never intersect (at least one background pixel between any two, so
    IoU = 0 < 0.1 and no shape hides part of another). One shape is the target:
    ``prompt = "the red circle"``, ``target`` = its tight drawn box, normalized xyxy with
    exclusive x2/y2 (pixels 8..23 -> 8/64, 24/64). ``binding=True`` (needs ``num_shapes`` >= 3):
    the expression needs attribute binding -- besides the target every image holds at least one
    shape of the target's colour (another shape) and one of the target's shape (another colour),
    "the red circle" among red squares and blue circles; the rest are random unique pairs.
    ``grid=g > 0``: one shape per cell of a g x g layout (as counting and existence), aligned
    with the vision tower's patches. With ``binding=False`` (the default) the pairs are drawn at random, so in most multi-shape
    images the colour or the shape alone names the target.
``ocr`` -- ``image_size=64, num_words=(1, 1), word_len=(3, 5), alphabet="a..z", grid=0``
    Random words in white on black, PIL's embedded FreeType font (size 0.3 * image_size
    shrunk until the text fits with a 2-pixel margin): the largest size at which either one
    line or a two-line wrap fits; at equal size one line wins. ``prompt = ""``; ``target`` = the words joined by single spaces.
    ``grid=g > 0``: monospaced instead, one letter per cell of a g x g layout (cells of
    image_size // g pixels) and one word per row, rows in reading order, each word at a
    random column, each row shifted by up to a pixel. With g = image_size // patch_size every
    ViT patch holds at most one glyph, which a tiny model learns to read in minutes.
``counting`` -- ``image_size=64, count=(0, 5), kinds=("circle", "square", "triangle"),
max_distractors=3, grid=0``
    ``count`` objects of one kind plus distractors of the other kinds, side 0.12-0.18 of
    the image, never touching. Colours: each image draws a random palette colour per kind,
    all objects of one kind share it and different kinds get different colours (so the
    colour -> kind mapping changes from image to image, and the count equals the number of
    connected blobs of that colour). An image with ``count == 0`` gets at least one
    distractor (when possible) so that it is never blank. ``prompt`` = the plural noun
    (``"circles"``); ``target`` = the count. ``grid=g > 0``: each object in its own cell of a
    g x g layout (side 0.55-0.85 of a cell, random place inside it) instead of anywhere.

``existence`` -- ``image_size=64, num_shapes=(2, 3), min_size=0.2, max_size=0.4, grid=0``
    A POPE-style existence probe (Li et al. 2023): shapes as in ``grounding`` (unique colour /
    shape pairs, never touching; ``grid=g > 0``: one per cell of a g x g layout), and a question
    about one (colour, shape) pair: ``prompt = "a red circle"`` / ``"an orange square"`` (the
    task instruction is "Is there {prompt} in the image?"), ``target = "yes"`` or ``"no"``. Each
    question is about an absent pair with probability 1/2, and the absent pair is a plausible
    distractor, never a random one: it shares its colour with one shape of the image and its
    shape with another ("a red circle" beside a red square and a blue circle) whenever two such
    shapes exist, else it shares the colour or the shape of one shape of the image.
    ``Sample.meta["absent"]``: ``None`` (present) or ``"binding"`` / ``"colour"`` / ``"shape"``
    (what the absent pair shares with the image).

Ranges ``(lo, hi)`` are inclusive and drawn per image; a single int means ``(n, n)``.
Unknown tasks or options raise ``ValueError`` naming them and listing the valid ones.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterator, Mapping, Sequence

import datasets
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from perpo.data.records import check_task, features_for

__all__ = [
    "PALETTE",
    "SHAPES",
    "SPLITS",
    "Sample",
    "default_options",
    "iter_samples",
    "make_records",
    "make_splits",
    "preview_grid",
    "split_samples",
]

#: Six well-separated colours; their names are used in referring expressions.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (155, 60, 205),
    "orange": (245, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles"}
BACKGROUND: tuple[int, int, int] = (40, 40, 40)  # grounding / counting
OCR_BACKGROUND: tuple[int, int, int] = (0, 0, 0)
OCR_INK: tuple[int, int, int] = (255, 255, 255)

#: Split names of :func:`make_splits`, in the order their seeds are spawned.
SPLITS: tuple[str, ...] = ("train", "val", "test")

_COUNT_OBJECT_SIZE = (0.12, 0.18)  # side as a fraction of the image (counting)
_CELL_OBJECT_SIZE = (0.55, 0.85)  # side as a fraction of a grid cell (counting with grid > 0)
_GAP = 1  # background pixels required between two objects' boxes
_OCR_MARGIN = 2  # background pixels kept around the text
_OCR_MIN_SIZE = 6  # absolute smallest font size
_PLACE_TRIES = 40
_PLACE_RESTARTS = 200

_DEFAULTS: dict[str, dict[str, Any]] = {
    "grounding": {"image_size": 64, "num_shapes": (1, 3), "min_size": 0.2, "max_size": 0.5, "binding": False, "grid": 0},
    "ocr": {
        "image_size": 64,
        "num_words": (1, 1),
        "word_len": (3, 5),
        "alphabet": "abcdefghijklmnopqrstuvwxyz",
        "grid": 0,
    },
    "counting": {"image_size": 64, "count": (0, 5), "kinds": SHAPES, "max_distractors": 3, "grid": 0},
    "existence": {"image_size": 64, "num_shapes": (2, 3), "min_size": 0.2, "max_size": 0.4, "grid": 0},
}


def default_options(task: str) -> dict[str, Any]:
    """A copy of the default options of ``task``."""
    check_task(task)
    return dict(_DEFAULTS[task])


@dataclass(frozen=True)
class Sample:
    """One generated example, with the generator's own account of what it drew.

    ``objects`` (grounding, counting): dicts with ``shape``, ``colour`` and ``box``, the
    tight pixel box ``(x1, y1, x2, y2)`` with exclusive x2/y2. ``target_index`` (grounding):
    index of the target in ``objects``. ``lines`` / ``font_size`` (ocr): the rendered layout.
    """

    image: Image.Image
    prompt: str
    target: Any
    objects: tuple[dict[str, Any], ...] = ()
    target_index: int | None = None
    lines: tuple[str, ...] = ()
    font_size: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- options


def _range(name: str, value: Any, lo_bound: int = 0) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(f"option {name!r} must be an int or an inclusive (lo, hi) pair, got {value!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (lo, hi)):
        raise ValueError(f"option {name!r} must hold integers, got {value!r}")
    lo, hi = int(lo), int(hi)
    if lo < lo_bound or hi < lo:
        raise ValueError(f"option {name!r} must satisfy {lo_bound} <= lo <= hi, got {value!r}")
    return lo, hi


def _resolve(task: str, options: Mapping[str, Any]) -> dict[str, Any]:
    check_task(task)
    defaults = _DEFAULTS[task]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for task {task!r}; "
            f"valid options: {', '.join(defaults)}"
        )
    opts = {**defaults, **options}
    size = opts["image_size"]
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 16:
        raise ValueError(f"option 'image_size' must be an int >= 16, got {size!r}")
    opts["image_size"] = int(size)

    if "grid" in opts:
        grid = opts["grid"]
        if not isinstance(grid, (int, np.integer)) or isinstance(grid, bool) or grid < 0 or (grid and size // grid < 8):
            raise ValueError(
                f"option 'grid' must be 0 (free layout) or an int >= 1 with cells of at least 8 pixels "
                f"(image_size // grid >= 8), got {grid!r} for image_size {size}"
            )
        opts["grid"] = int(grid)

    if task in ("grounding", "existence"):
        opts["num_shapes"] = _range("num_shapes", opts["num_shapes"], lo_bound=1)
        if opts["num_shapes"][1] > len(PALETTE) * len(SHAPES):
            raise ValueError(
                f"option 'num_shapes' allows at most {len(PALETTE) * len(SHAPES)} shapes "
                f"(unique colour/shape pairs), got {opts['num_shapes']!r}"
            )
        lo, hi = float(opts["min_size"]), float(opts["max_size"])
        if not (0.0 < lo <= hi <= 1.0):
            raise ValueError(f"options need 0 < min_size <= max_size <= 1, got {lo!r}, {hi!r}")
        opts["min_size"], opts["max_size"] = lo, hi
        if task == "grounding":
            if not isinstance(opts["binding"], (bool, np.bool_)):
                raise ValueError(f"option 'binding' must be true or false, got {opts['binding']!r}")
            opts["binding"] = bool(opts["binding"])
            if opts["binding"] and opts["num_shapes"][0] < 3:
                raise ValueError(
                    f"option 'binding' needs at least 3 shapes per image (the target, one of its colour, "
                    f"one of its shape), got num_shapes {opts['num_shapes']!r}"
                )
        if opts["grid"] and opts["num_shapes"][1] > opts["grid"] ** 2:
            raise ValueError(
                f"with option 'grid' = {opts['grid']} an image holds at most {opts['grid'] ** 2} shapes "
                f"(one per cell), got num_shapes {opts['num_shapes']!r}"
            )
    elif task == "ocr":
        opts["num_words"] = _range("num_words", opts["num_words"], lo_bound=1)
        opts["word_len"] = _range("word_len", opts["word_len"], lo_bound=1)
        alphabet = opts["alphabet"]
        if not isinstance(alphabet, str) or not alphabet or any(c.isspace() for c in alphabet):
            raise ValueError(f"option 'alphabet' must be a non-empty string without spaces, got {alphabet!r}")
        opts["alphabet"] = "".join(dict.fromkeys(alphabet))  # de-duplicate, keep order
        g = opts["grid"]
        if g and (opts["word_len"][1] > g or opts["num_words"][1] > g):
            raise ValueError(
                f"with option 'grid' = {g} a word has at most {g} letters and an image at most {g} words "
                f"(one per row), got word_len {opts['word_len']!r}, num_words {opts['num_words']!r}"
            )
    else:
        opts["count"] = _range("count", opts["count"], lo_bound=0)
        kinds = opts["kinds"]
        if isinstance(kinds, str):
            kinds = (kinds,)
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in SHAPES]
        if bad or not kinds or len(set(kinds)) != len(kinds):
            raise ValueError(
                f"option 'kinds' must be distinct names from {', '.join(SHAPES)}, got {opts['kinds']!r}"
            )
        opts["kinds"] = kinds
        md = opts["max_distractors"]
        if not isinstance(md, (int, np.integer)) or isinstance(md, bool) or md < 0:
            raise ValueError(f"option 'max_distractors' must be an int >= 0, got {md!r}")
        opts["max_distractors"] = int(md)
        g = opts["grid"]
        if g and opts["count"][1] + md > g * g:
            raise ValueError(
                f"with option 'grid' = {g} an image holds at most {g * g} objects (one per cell), "
                f"but count {opts['count']!r} plus max_distractors {md} can exceed it"
            )
    return opts


# --------------------------------------------------------------------------- drawing


def _disjoint(a: Sequence[int], b: Sequence[int], gap: int) -> bool:
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _place(rng: np.random.Generator, n: int, image_size: int, lo: float, hi: float) -> list[tuple[int, int, int, int]]:
    """``n`` square boxes (side in [lo, hi] * image_size) that keep ``_GAP`` pixels apart."""
    for _ in range(_PLACE_RESTARTS):
        boxes: list[tuple[int, int, int, int]] = []
        for _j in range(n):
            for _t in range(_PLACE_TRIES):
                side = int(round(rng.uniform(lo, hi) * image_size))
                side = min(max(side, 3), image_size)
                x0 = int(rng.integers(0, image_size - side + 1))
                y0 = int(rng.integers(0, image_size - side + 1))
                box = (x0, y0, x0 + side, y0 + side)
                if all(_disjoint(box, other, _GAP) for other in boxes):
                    boxes.append(box)
                    break
            else:
                break
        else:
            return boxes
    raise ValueError(
        f"could not place {n} non-overlapping shapes of side {lo:.2f}-{hi:.2f} in a "
        f"{image_size}x{image_size} image; lower the number of shapes or their size"
    )


def _place_in_cells(rng: np.random.Generator, n: int, image_size: int, grid: int) -> list[tuple[int, int, int, int]]:
    """``n`` square boxes in ``n`` distinct cells of a ``grid x grid`` layout, side 0.55-0.85 of
    a cell, placed at random inside it (cells keep objects apart and aligned with ViT patches)."""
    cell = image_size // grid
    boxes = []
    for c in rng.choice(grid * grid, size=n, replace=False):
        row, col = divmod(int(c), grid)
        side = int(round(rng.uniform(*_CELL_OBJECT_SIZE) * cell))
        side = min(max(side, 3), cell - 1)
        x0 = col * cell + int(rng.integers(0, cell - side))
        y0 = row * cell + int(rng.integers(0, cell - side))
        boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes


def _shape_mask(shape: str, box: Sequence[int], image_size: int) -> Image.Image:
    mask = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    last_x, last_y = x1 - 1, y1 - 1  # PIL's xy for ellipse/rectangle is inclusive
    if shape == "circle":
        draw.ellipse((x0, y0, last_x, last_y), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, last_x, last_y), fill=255)
    elif shape == "triangle":
        draw.polygon([(x0, last_y), (last_x, last_y), ((x0 + last_x) / 2.0, y0)], fill=255)
    else:  # pragma: no cover - guarded by option validation
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _draw_objects(
    shapes: Sequence[str], colours: Sequence[str], boxes: Sequence[Sequence[int]], image_size: int
) -> tuple[Image.Image, tuple[dict[str, Any], ...]]:
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    objects = []
    for shape, colour, box in zip(shapes, colours, boxes):
        mask = _shape_mask(shape, box, image_size)
        image.paste(PALETTE[colour], mask=mask)
        tight = mask.getbbox()  # (x1, y1, x2, y2), x2/y2 exclusive
        assert tight is not None
        objects.append({"shape": shape, "colour": colour, "box": tuple(int(v) for v in tight)})
    return image, tuple(objects)


# --------------------------------------------------------------------------- tasks

_COLOURS = tuple(PALETTE)
_PAIRS = tuple((c, s) for c in _COLOURS for s in SHAPES)


def _binding_pairs(rng: np.random.Generator, n: int) -> tuple[list[tuple[str, str]], int]:
    """``n >= 3`` unique (colour, shape) pairs in random order and the target's index: the target,
    one pair of its colour and another shape, one of its shape and another colour, the rest random."""
    colour, shape = _PAIRS[int(rng.integers(0, len(_PAIRS)))]
    other_shapes = [s for s in SHAPES if s != shape]
    other_colours = [c for c in _COLOURS if c != colour]
    chosen = [
        (colour, shape),
        (colour, other_shapes[int(rng.integers(0, len(other_shapes)))]),
        (other_colours[int(rng.integers(0, len(other_colours)))], shape),
    ]
    rest = [p for p in _PAIRS if p not in chosen]
    chosen += [rest[int(i)] for i in rng.choice(len(rest), size=n - 3, replace=False)]
    order = [int(i) for i in rng.permutation(n)]
    return [chosen[i] for i in order], order.index(0)


def _grounding(rng: np.random.Generator, opts: Mapping[str, Any]) -> Sample:
    size = opts["image_size"]
    n = int(rng.integers(opts["num_shapes"][0], opts["num_shapes"][1] + 1))
    if opts["binding"]:
        pairs, t = _binding_pairs(rng, n)
    else:
        pairs = [_PAIRS[i] for i in rng.choice(len(_PAIRS), size=n, replace=False)]
    if opts["grid"]:  # one shape per cell, aligned with the ViT's patches (as counting / existence)
        boxes = _place_in_cells(rng, n, size, opts["grid"])
    else:
        boxes = _place(rng, n, size, opts["min_size"], opts["max_size"])
    image, objects = _draw_objects([p[1] for p in pairs], [p[0] for p in pairs], boxes, size)
    if not opts["binding"]:
        t = int(rng.integers(0, n))
    obj = objects[t]
    target = [v / size for v in obj["box"]]
    return Sample(image, f"the {obj['colour']} {obj['shape']}", target, objects, target_index=t)


def _counting(rng: np.random.Generator, opts: Mapping[str, Any]) -> Sample:
    size = opts["image_size"]
    kinds = opts["kinds"]
    kind = kinds[int(rng.integers(0, len(kinds)))]
    k = int(rng.integers(opts["count"][0], opts["count"][1] + 1))
    others = [s for s in kinds if s != kind]
    max_d = opts["max_distractors"] if others else 0
    min_d = 1 if (k == 0 and max_d > 0) else 0
    d = int(rng.integers(min_d, max_d + 1))
    distractors = [others[int(i)] for i in rng.integers(0, len(others), size=d)] if d else []
    colour_of = dict(zip(SHAPES, (_COLOURS[i] for i in rng.permutation(len(_COLOURS))[: len(SHAPES)])))
    shapes = [kind] * k + distractors
    order = rng.permutation(len(shapes)) if shapes else []
    shapes = [shapes[int(i)] for i in order]
    if opts["grid"]:
        boxes = _place_in_cells(rng, len(shapes), size, opts["grid"])
    else:
        boxes = _place(rng, len(shapes), size, *_COUNT_OBJECT_SIZE)
    image, objects = _draw_objects(shapes, [colour_of[s] for s in shapes], boxes, size)
    return Sample(image, PLURALS[kind], k, objects, meta={"kind": kind, "colour": colour_of[kind]})


def _article(colour: str) -> str:
    return "an" if colour[0] in "aeiou" else "a"


def _absent_pair(rng: np.random.Generator, pairs: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], str]:
    """A (colour, shape) pair not among ``pairs`` that a model which does not bind colour to shape
    would think present, and what it shares with them: ``"binding"`` (its colour is one shape's and
    its shape another's), else ``"colour"`` or ``"shape"`` (one attribute of one shape)."""
    present = set(pairs)
    colours, shapes = {c for c, _ in pairs}, {s for _, s in pairs}
    binding = [(c, s) for c in _COLOURS for s in SHAPES if c in colours and s in shapes and (c, s) not in present]
    if binding:
        return binding[int(rng.integers(0, len(binding)))], "binding"
    one = [(c, s) for c in _COLOURS for s in SHAPES if (c in colours) != (s in shapes) and (c, s) not in present]
    pair = one[int(rng.integers(0, len(one)))]
    return pair, "colour" if pair[0] in colours else "shape"


def _existence(rng: np.random.Generator, opts: Mapping[str, Any]) -> Sample:
    size = opts["image_size"]
    n = int(rng.integers(opts["num_shapes"][0], opts["num_shapes"][1] + 1))
    pairs = [_PAIRS[i] for i in rng.choice(len(_PAIRS), size=n, replace=False)]
    if opts["grid"]:
        boxes = _place_in_cells(rng, n, size, opts["grid"])
    else:
        boxes = _place(rng, n, size, opts["min_size"], opts["max_size"])
    image, objects = _draw_objects([p[1] for p in pairs], [p[0] for p in pairs], boxes, size)
    if rng.random() < 0.5:
        t: int | None = int(rng.integers(0, n))
        asked, absent = pairs[t], None
    else:
        t = None
        asked, absent = _absent_pair(rng, pairs)
    colour, shape = asked
    prompt = f"{_article(colour)} {colour} {shape}"
    meta = {"asked": asked, "absent": absent}
    return Sample(image, prompt, "no" if absent else "yes", objects, target_index=t, meta=meta)


@lru_cache(maxsize=128)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # type: ignore[return-value]


def _layout(lines: Sequence[str], font: ImageFont.FreeTypeFont) -> tuple[int, int, list[tuple[int, int]]]:
    """Ink width/height of ``lines`` stacked, and the (dx, dy) drawing offset of each line."""
    ascent, descent = font.getmetrics()
    line_h = ascent + descent
    boxes = [font.getbbox(line) for line in lines]
    left = min(b[0] for b in boxes)
    right = max(b[2] for b in boxes)
    top = boxes[0][1]
    bottom = (len(lines) - 1) * line_h + boxes[-1][3]
    offsets = [(-left, -top + i * line_h) for i in range(len(lines))]
    return right - left, bottom - top, offsets


def _splits_two(words: Sequence[str]) -> list[tuple[str, ...]]:
    """Two-line layouts, most balanced (shortest longer line) first."""
    cands = [(" ".join(words[:i]), " ".join(words[i:])) for i in range(1, len(words))]
    return sorted(cands, key=lambda p: max(len(p[0]), len(p[1])))


def _ocr(rng: np.random.Generator, opts: Mapping[str, Any]) -> Sample:
    size = opts["image_size"]
    alphabet = opts["alphabet"]
    n_words = int(rng.integers(opts["num_words"][0], opts["num_words"][1] + 1))
    words = []
    for _ in range(n_words):
        length = int(rng.integers(opts["word_len"][0], opts["word_len"][1] + 1))
        words.append("".join(alphabet[int(i)] for i in rng.integers(0, len(alphabet), size=length)))
    text = " ".join(words)
    if opts["grid"]:
        return _ocr_grid(rng, words, size, opts["grid"], alphabet)
    room = size - 2 * _OCR_MARGIN
    max_font = max(_OCR_MIN_SIZE, int(round(size * 0.3)))

    layouts: list[tuple[str, ...]] = [(text,)] + _splits_two(words)
    chosen = None
    # the largest font at which some layout fits; at equal size one line beats two
    for fsize in range(max_font, _OCR_MIN_SIZE - 1, -1):
        font = _font(fsize)
        for lines in layouts:
            w, h, offs = _layout(lines, font)
            if w <= room and h <= room:
                chosen = (fsize, lines, w, h, offs)
                break
        if chosen:
            break
    if chosen is None:
        raise ValueError(
            f"text {text!r} does not fit a {size}x{size} image even at font size "
            f"{_OCR_MIN_SIZE}; lower 'word_len'/'num_words' or raise 'image_size'"
        )
    fsize, lines, w, h, offs = chosen
    font = _font(fsize)
    x = _OCR_MARGIN + int(rng.integers(0, room - w + 1))
    y = _OCR_MARGIN + int(rng.integers(0, room - h + 1))
    image = Image.new("RGB", (size, size), OCR_BACKGROUND)
    draw = ImageDraw.Draw(image)
    for line, (dx, dy) in zip(lines, offs):
        draw.text((x + dx, y + dy), line, font=font, fill=OCR_INK)
    return Sample(image, "", text, lines=tuple(lines), font_size=fsize, meta={"xy": (x, y), "wh": (w, h)})


@lru_cache(maxsize=32)
def _cell_font(cell: int, alphabet: str) -> tuple[int, int, int]:
    """(font size, ink top, ink height): the largest font whose every glyph fits a cell with a
    1-pixel margin, all glyphs sharing one baseline."""
    for fsize in range(cell, _OCR_MIN_SIZE - 1, -1):
        font = _font(fsize)
        boxes = [font.getbbox(c) for c in alphabet]
        top = min(b[1] for b in boxes)
        height = max(b[3] for b in boxes) - top
        if max(b[2] - b[0] for b in boxes) <= cell - 2 and height <= cell - 2:
            return fsize, top, height
    raise ValueError(f"no font size >= {_OCR_MIN_SIZE} fits the alphabet into {cell}-pixel cells")


def _ocr_grid(rng: np.random.Generator, words: Sequence[str], size: int, grid: int, alphabet: str) -> Sample:
    """Monospaced text, one letter per cell of a ``grid x grid`` layout and one word per row
    (rows in reading order, each word starting at a random column), so that each ViT patch of a
    ``size // grid`` patch model holds one glyph. Each row is shifted by up to one pixel."""
    cell = size // grid
    fsize, top, height = _cell_font(cell, alphabet)
    font = _font(fsize)
    rows = sorted(int(r) for r in rng.choice(grid, size=len(words), replace=False))
    image = Image.new("RGB", (size, size), OCR_BACKGROUND)
    draw = ImageDraw.Draw(image)
    for word, row in zip(words, rows):
        col0 = int(rng.integers(0, grid - len(word) + 1))
        jx, jy = (int(v) for v in rng.integers(-1, 2, size=2))
        for i, ch in enumerate(word):
            left, _, right, _ = font.getbbox(ch)
            x = (col0 + i) * cell + (cell - (right - left)) // 2 - left + jx
            y = row * cell + (cell - height) // 2 - top + jy
            draw.text((x, y), ch, font=font, fill=OCR_INK)
    return Sample(image, "", " ".join(words), lines=tuple(words), font_size=fsize, meta={"rows": tuple(rows)})


_GENERATORS = {"grounding": _grounding, "ocr": _ocr, "counting": _counting, "existence": _existence}


# --------------------------------------------------------------------------- public API


def _rng(seed: Any) -> np.random.Generator:
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return np.random.default_rng(int(seed))


def iter_samples(task: str, n: int, seed: int | np.random.SeedSequence, **options: Any) -> Iterator[Sample]:
    """Yield ``n`` :class:`Sample` objects (image, prompt, target and what was drawn)."""
    opts = _resolve(task, options)
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    rng = _rng(seed)
    gen = _GENERATORS[task]
    for _ in range(int(n)):
        yield gen(rng, opts)


def _to_dataset(task: str, ids: list[str], samples: list[Sample], size: int) -> datasets.Dataset:
    columns = {
        "id": ids,
        "task": [task] * len(samples),
        "image": [s.image for s in samples],
        "prompt": [s.prompt for s in samples],
        "target": [s.target for s in samples],
        "width": [size] * len(samples),
        "height": [size] * len(samples),
    }
    return datasets.Dataset.from_dict(columns, features=features_for(task))


def make_records(task: str, n: int, seed: int, **options: Any) -> datasets.Dataset:
    """``n`` records of ``task`` generated from ``seed``; ids ``f"{task}-{seed}-{i:06d}"``."""
    opts = _resolve(task, options)
    samples = list(iter_samples(task, n, seed, **options))
    ids = [f"{task}-{seed}-{i:06d}" for i in range(len(samples))]
    return _to_dataset(task, ids, samples, opts["image_size"])


def _digest(image: Image.Image) -> bytes:
    return hashlib.blake2b(image.tobytes(), digest_size=16).digest()


def make_splits(task: str, sizes: Mapping[str, int], seed: int, **options: Any) -> datasets.DatasetDict:
    """Train/val/test records of ``task``; ``sizes`` maps split names to record counts.

    Each split has its own random stream, ``SeedSequence(seed).spawn(3)[SPLITS.index(name)]``,
    so a split depends only on ``seed``, its name, its size and the options (the test set
    is the same whatever the train size), and the streams are disjoint from each other and
    from ``make_records(seed)``. As a further guarantee, no image appears in two splits: the
    test split is generated first, then val, then train, and a sample whose pixels equal
    one of an earlier split is replaced by the next one of its stream. Ids are
    ``f"{task}-{seed}-{split}-{i:06d}"``.
    """
    opts = _resolve(task, options)
    samples = split_samples(task, sizes, seed, **options)
    out = {}
    for name, drawn in samples.items():
        ids = [f"{task}-{seed}-{name}-{i:06d}" for i in range(len(drawn))]
        out[name] = _to_dataset(task, ids, drawn, opts["image_size"])
    return datasets.DatasetDict(out)


def split_samples(task: str, sizes: Mapping[str, int], seed: int, **options: Any) -> dict[str, list[Sample]]:
    """The :class:`Sample` objects behind :func:`make_splits`' records, split by split, in record
    order: what was drawn (every object's box, colour and shape), which the records leave out --
    e.g. to tell a box on the wrong object from an imprecise box on the right one."""
    opts = _resolve(task, options)
    unknown = [name for name in sizes if name not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {', '.join(map(repr, unknown))}; valid splits: {', '.join(SPLITS)}")
    for name, count in sizes.items():
        if not isinstance(count, (int, np.integer)) or isinstance(count, bool) or count < 0:
            raise ValueError(f"size of split {name!r} must be a non-negative int, got {count!r}")
    _rng(seed)  # validates the seed
    children = np.random.SeedSequence(int(seed)).spawn(len(SPLITS))
    gen = _GENERATORS[task]
    seen: set[bytes] = set()
    out: dict[str, list[Sample]] = {}
    for name in reversed(SPLITS):  # test, val, train
        if name not in sizes:
            continue
        rng = np.random.default_rng(children[SPLITS.index(name)])
        samples: list[Sample] = []
        digests: set[bytes] = set()
        budget = 100 * int(sizes[name]) + 1000
        while len(samples) < int(sizes[name]):
            budget -= 1
            if budget < 0:
                raise ValueError(
                    f"could not draw {sizes[name]} images for split {name!r} that differ from "
                    f"the other splits; the options allow too few distinct images"
                )
            sample = gen(rng, opts)
            key = _digest(sample.image)
            if key in seen:
                continue
            samples.append(sample)
            digests.add(key)
        seen |= digests
        out[name] = samples
    return {name: out[name] for name in SPLITS if name in out}


# --------------------------------------------------------------------------- preview


def _format_target(task: str, target: Any) -> str:
    if task == "grounding":
        return "[" + ", ".join(f"{float(v):.2f}" for v in target) + "]"
    return repr(target) if task == "ocr" else str(target)


def preview_grid(dataset: datasets.Dataset, n: int = 16, *, scale: int = 2, columns: int | None = None) -> Image.Image:
    """Tile the first ``n`` records with their prompt and target written below each image.

    Each cell is the image scaled by ``scale`` (nearest neighbour; grounding targets are
    outlined in white) above a 2-line caption band of 24 px. The result has
    ``columns = columns or ceil(sqrt(n))`` columns and ``ceil(n / columns)`` rows, with
    ``n = min(n, len(dataset))``; cell width is ``max(image width) * scale``, cell height
    ``max(image height) * scale + 24``.
    """
    n = min(int(n), len(dataset))
    if n <= 0:
        raise ValueError("preview_grid needs at least one record")
    rows_data = [dataset[i] for i in range(n)]
    cols = int(columns or math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    cell_w = max(r["image"].width for r in rows_data) * scale
    img_h = max(r["image"].height for r in rows_data) * scale
    caption_h = 24
    grid = Image.new("RGB", (cols * cell_w, rows * (img_h + caption_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = _font(9)
    for idx, rec in enumerate(rows_data):
        cx, cy = (idx % cols) * cell_w, (idx // cols) * (img_h + caption_h)
        im = rec["image"].convert("RGB")
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
        if rec["task"] == "grounding":
            x1, y1, x2, y2 = rec["target"]
            ImageDraw.Draw(im).rectangle(
                (x1 * im.width, y1 * im.height, x2 * im.width - 1, y2 * im.height - 1), outline=(255, 255, 255)
            )
        grid.paste(im, (cx, cy))
        prompt = rec["prompt"] or f"<{rec['task']}>"
        draw.text((cx + 2, cy + img_h + 1), prompt, font=font, fill=(0, 0, 0))
        draw.text((cx + 2, cy + img_h + 12), _format_target(rec["task"], rec["target"]), font=font, fill=(0, 0, 160))
    return grid
