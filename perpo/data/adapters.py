"""Real-data adapters: external dataset layouts -> the record schema of :mod:`perpo.data.records`.

Every adapter reads its source through Hugging Face ``datasets`` and returns a
``datasets.Dataset`` whose features are exactly ``features_for(task)`` (``list_features(task)``
for ``release_lists``), every row passing ``validate_record``, plus a :class:`SkipReport`.
:func:`load_split` is the entry point the pipeline calls with the ``data`` config.

The ``data`` config (``conf/data/<name>.yaml``)
    ``adapter``  one of :data:`ADAPTERS`.
    ``path``     a local file, folder or glob, or a hub id ``owner/name``. A folder's splits are
                 inferred by ``datasets`` (``data/val-00000-of-00001.parquet``, ``test.jsonl``,
                 ``train/`` ...; a README with ``configs`` is honoured); a single file or a glob
                 is the one split ``train``. A hub id is resolved the same way, and only the
                 requested split's files are downloaded and read.
    ``splits``   our split -> the source's split (``test: testA``). Absent: the same names. A
                 value may also be a mapping ``{split: val, adapter: refcoco, path: ...}`` that
                 overrides the top-level keys for that split (lists for training, RefCOCO for
                 evaluation); naming another adapter drops the top-level columns and options.
    ``columns``  the adapter's column roles -> the source's column names (defaults below; give
                 only the ones that differ; ``null`` = not present). A named column that is
                 missing is an error; an optional role's *default* column may be absent.
    ``options``  adapter options (below) plus, for all, ``format`` (the ``datasets`` builder of a
                 folder: parquet / json / csv / imagefolder; null = inferred; a file's known
                 extension wins) and ``cache_dir`` (the ``datasets`` cache; null = the HF default).
    ``sizes``    our split -> a cap on *source* rows (the first n, deterministic); null = all.

Layouts (column roles, defaults in parentheses)
    ``refcoco`` (grounding): the lmms-lab RefCOCO / RefCOCO+ / RefCOCOg parquet files, splits
        ``val``, ``test``, ``testA``, ``testB``: ``id`` (question_id), ``image`` (image),
        ``expressions`` (answer: a list of referring expressions, or one string), ``bbox``
        (bbox: COCO ``[x, y, w, h]`` in pixels); ``segmentation``, ``iscrowd``, ``file_name``
        are ignored. One record per expression, id ``f"{question_id}-{k}"``.
    ``ocr_pages`` (ocr): page images with their full text: ``image`` (image), ``text`` (text),
        ``id`` (null: ``ocr_pages-<split>-000012``). Prompt ``""``.
    ``counting`` (counting): CountBench / TallyQA / PixMo-Count-like rows: ``image`` (image),
        ``prompt`` (question), ``count`` (count), ``id`` (null). Option ``prompt_regex``: a regex
        searched (case-insensitively) in the prompt column whose group ``noun`` (else group 1,
        else the whole match) is the prompt, e.g. ``"how many (?P<noun>.+?) (?:are|is) there"``
        turns "How many dogs are there?" into "dogs"; a prompt it does not match is skipped.
        Default null: the column is the prompt as-is (PixMo-Count's ``label``: "dog"). A count
        must be an integer (``3``, ``3.0`` or ``"3"``) >= 0.
    ``release_lists`` (grounding; ocr / counting work too): the PerPO release's JSONL, one list
        per line: ``id`` (image_id), ``image`` (image_path: relative to option ``image_dir``,
        default the folder of ``path``, or absolute), ``question`` (question), ``answer``
        (answer: the ground truth, ``"[x1, y1, x2, y2]"`` normalized with 2 decimals for
        grounding, as fractions of option ``box_frame``'s picture: ``original`` (default) or
        ``padded_square``, LLaVA-1.5's ``image_aspect_ratio=pad`` frame (LLaVA issues #606, #822);
        read back to the original image, as every record's target is), ``answers`` (answers_gen: N sampled answers, kept in the given order: the
        loss compares pairs, in any order), ``rewards`` (iou_scores: N rewards, clipped to [0, 1] as float32).
        ``parsed[i]`` is whether answer i parses with box format option ``box_format``
        (norm2; counting: a number; ocr: non-empty). The prompt is the question without
        ``<image>`` and without option ``instruction_prefix`` (the paper's grounding
        instruction, matched case-insensitively at the start; absent: the stripped question).
        The release's image ids repeat (several expressions per image), so the row index
        is appended: id ``f"{image_id}-{row}"``.
    ``columns`` (any task, "your own data"): ``id`` (id; null = generated), ``image`` (image),
        ``prompt`` (prompt; null for ocr = ``""``), ``target`` (target). Path-valued images are
        relative to option ``image_dir`` (default: the folder of ``path``). Grounding targets
        (a list of 4 numbers or a string holding 4) are read as option ``box``:
        ``xyxy_pixels`` (default), ``xyxy_norm`` or ``xywh_pixels``.

Robustness: a bad row never raises. It is skipped and counted by reason in the
:class:`SkipReport` (with up to 5 example ids): a missing or undecodable image, a box that is
degenerate (no area) or outside the image by more than 1 pixel (within 1 pixel it is clipped),
an empty expression / text / prompt, a bad count, a list with mismatched lengths, fewer than 2
answers or a NaN reward. Images are decoded with PIL (EXIF orientation applied, as ``datasets``
does on access) and stored as RGB; width / height come from the decoded image. A source that
cannot be read at all (path, split or column missing, an unknown option or column role) raises
:class:`DataError` naming it; so does a file ``datasets`` cannot parse, naming the file and the
line at fault (:mod:`perpo.data.files`: a line that is not JSON, a column typed differently in
two files, a CSV line with too many fields, a damaged parquet file); so does :func:`load_split`
for a split whose every row was skipped.

Memory and caching: outputs are written by ``Dataset.from_generator`` (Arrow on disk, one row
in memory at a time); an RGB image keeps its original bytes (no re-encoding). Skipped rows are
generated too, as placeholders carrying their reason, so a cached result (keyed by the source's
fingerprint, the config and this file's contents) yields the same report without re-reading
anything; the placeholders are dropped before returning. Images named by path are not part of
that key: after replacing one on disk, change the config or clear the cache to re-read it.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import math
import numbers
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import datasets
from PIL import Image, ImageOps

from perpo.data.files import files_problem, root_cause
from perpo.data.records import features_for, validate_record

__all__ = ["ADAPTERS", "DataError", "SkipReport", "load_split"]

log = logging.getLogger(__name__)

GROUNDING_PREFIX = "Please provide the bounding box coordinate of the region this sentence describes: "
BOX_TOLERANCE_PX = 1.0  # annotation tools round; a box this far outside the image is clipped
MAX_EXAMPLES = 5
_SKIP = "_skip"  # internal column: "" for a record, the reason for a skipped row's placeholder
_INT32_MAX = 2**31 - 1
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_EXTENSIONS = {"parquet": (".parquet",), "json": (".json", ".jsonl"), "csv": (".csv",)}
_BOX_LAYOUTS = ("xyxy_pixels", "xyxy_norm", "xywh_pixels")


class DataError(ValueError):
    """A data source cannot be read: names the file, split or column."""


@dataclass
class SkipReport:
    counts: dict[str, int] = field(default_factory=dict)  # reason -> number of rows skipped
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> up to 5 ids
    total: int = 0  # rows read (refcoco: one per referring expression)
    label: str = ""  # e.g. "refcoco val", the start of the summary

    def add(self, reason: str, record_id: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        ids = self.examples.setdefault(reason, [])
        if len(ids) < MAX_EXAMPLES:
            ids.append(record_id)

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def kept(self) -> int:
        return self.total - self.skipped

    def summary(self) -> str:
        """One line, e.g. ``refcoco val: 3 of 120 rows skipped (2 degenerate box: ids a, b; ...)``."""
        head = f"{self.label}: " if self.label else ""
        if not self.skipped:
            return f"{head}{self.total} rows, none skipped"
        parts = []
        for reason, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            ids = self.examples.get(reason, [])
            more = ", ..." if n > len(ids) else ""
            parts.append(f"{n} {reason}: {'ids' if len(ids) > 1 else 'id'} {', '.join(ids)}{more}")
        return f"{head}{self.skipped} of {self.total} rows skipped ({'; '.join(parts)})"


# ----- row-level helpers: each raises _Bad(reason) for a row to skip ----------------------------
class _Bad(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Skipped(NamedTuple):
    id: str
    reason: str


def _image_bytes(value: Any, image_dir: Path | None) -> bytes:
    """The encoded bytes of an image given as ``{"bytes", "path"}``, raw bytes or a path."""
    if isinstance(value, Mapping):  # datasets.Image(decode=False)
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)) and value:
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        raise _Bad("missing image")
    path = Path(value).expanduser()
    if not path.is_absolute() and image_dir is not None:
        path = image_dir / path
    try:
        return path.read_bytes()
    except OSError:  # not found, a folder, no permission
        raise _Bad("missing image") from None


def _read_image(value: Any, image_dir: Path | None) -> tuple[Any, int, int]:
    """``(image value to store, width, height)``; RGB images keep their original bytes."""
    data = _image_bytes(value, image_dir)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        if image.getexif().get(Image.ExifTags.Base.Orientation) is not None:
            image = ImageOps.exif_transpose(image)  # datasets does the same when it decodes
            data = None  # the stored copy must not be transposed twice
        width, height = image.size
        if image.mode == "RGB" and data is not None:
            return {"bytes": data, "path": None}, width, height
        return image.convert("RGB"), width, height
    except Exception:  # PIL raises many types on bad bytes (OSError, SyntaxError, DecompressionBomb...)
        raise _Bad("unreadable image") from None


def _four_numbers(value: Any) -> list[float]:
    """Four finite floats from a list / tuple of numbers or a string holding exactly four."""
    if isinstance(value, str):
        value = _NUMBER.findall(value)
        if len(value) != 4:
            raise _Bad("malformed box")
    elif isinstance(value, (list, tuple)) and len(value) == 4:
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
            raise _Bad("malformed box")
    else:
        raise _Bad("malformed box")
    numbers_ = [float(v) for v in value]
    if not all(math.isfinite(v) for v in numbers_):
        raise _Bad("malformed box")
    return numbers_


def _pixel_box(value: Any, width: int, height: int, layout: str) -> list[float]:
    """A box given in ``layout`` -> normalized xyxy, clipped only within the pixel tolerance."""
    a, b, c, d = _four_numbers(value)
    if layout == "xywh_pixels":
        x1, y1, x2, y2 = a, b, a + c, b + d
    elif layout == "xyxy_norm":
        x1, y1, x2, y2 = a * width, b * height, c * width, d * height
    else:
        x1, y1, x2, y2 = a, b, c, d
    if x2 <= x1 or y2 <= y1:
        raise _Bad("degenerate box")
    tol = BOX_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        raise _Bad("box outside image")
    box = [min(1.0, max(0.0, v)) for v in (x1 / width, y1 / height, x2 / width, y2 / height)]
    if box[2] <= box[0] or box[3] <= box[1]:  # lay entirely within the tolerance band
        raise _Bad("degenerate box")
    return box


def _count(value: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise _Bad("non-integer count")
    if value < 0:
        raise _Bad("negative count")
    if value > _INT32_MAX:
        raise _Bad("count out of range")
    return int(value)


def _text(value: Any, reason: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(reason)
    return value


def strip_question(question: str, prefix: str | None) -> str:
    """The release's question minus ``<image>`` and the instruction ``prefix`` (any case)."""
    text = question.replace("<image>", " ").strip()
    head = (prefix or "").strip()
    # casefold both sides of the same length slice: lower() may change a string's length
    if head and text[: len(head)].casefold() == head.casefold():
        text = text[len(head) :]
    return text.strip()


class _Ids:
    """Record ids: the id column's value (or ``<adapter>-<split>-<row>``), made unique."""

    def __init__(self, prefix: str, column: str | None):
        self.prefix, self.column, self.seen = prefix, column, set()

    def base(self, index: int, row: Mapping[str, Any]) -> str:
        value = row.get(self.column) if self.column else None
        if value is None or (isinstance(value, str) and not value.strip()):
            return f"{self.prefix}-{index:06d}"
        return str(value)

    def unique(self, record_id: str, index: int) -> str:
        if record_id in self.seen:  # a repeated id would make ids ambiguous downstream
            record_id = f"{record_id}@{index}"
        self.seen.add(record_id)
        return record_id


# ----- converters: one source row -> records or _Skipped ---------------------------------------
def _record(record_id: str, task: str, image: tuple[Any, int, int], prompt: str, target: Any) -> dict:
    value, width, height = image
    return {"id": record_id, "task": task, "image": value, "prompt": prompt, "target": target,
            "width": width, "height": height}


def _refcoco(ctx: _Context) -> Callable:
    col = ctx.columns

    def convert(index: int, row: Mapping) -> Iterator[Any]:
        base = ctx.ids.base(index, row)
        expressions = row.get(col["expressions"])
        if isinstance(expressions, str):
            expressions = [expressions]
        if not isinstance(expressions, (list, tuple)) or not expressions:
            yield _Skipped(base, "no referring expression")
            return
        ids = [f"{base}-{k}" for k in range(len(expressions))]
        try:
            image = _read_image(row.get(col["image"]), ctx.image_dir)
            box = _pixel_box(row.get(col["bbox"]), image[1], image[2], "xywh_pixels")
        except _Bad as bad:  # the image / box is shared: every expression of the row goes
            yield from (_Skipped(i, bad.reason) for i in ids)
            return
        for record_id, expression in zip(ids, expressions):
            if not isinstance(expression, str) or not expression.strip():
                yield _Skipped(record_id, "empty expression")
            else:
                yield _record(record_id, "grounding", image, expression.strip(), box)

    return convert


def _one_per_row(make: Callable[[_Context], Callable[[str, Mapping], dict]]) -> Callable[[_Context], Callable]:
    """``make(ctx)`` returns ``build(id, row) -> record`` (raising _Bad): one record per row."""

    def factory(ctx: _Context) -> Callable:
        build = make(ctx)

        def convert(index: int, row: Mapping) -> Iterator[Any]:
            record_id = ctx.ids.base(index, row)
            if ctx.layout.row_in_id:
                record_id = f"{record_id}-{index}"
            try:
                yield build(record_id, row)
            except _Bad as bad:
                yield _Skipped(record_id, bad.reason)

        return convert

    return factory


@_one_per_row
def _ocr_pages(ctx: _Context):
    col = ctx.columns

    def build(record_id: str, row: Mapping) -> dict:
        text = _text(row.get(col["text"]), "empty text")
        image = _read_image(row.get(col["image"]), ctx.image_dir)
        return _record(record_id, "ocr", image, "", text)

    return build


def _noun(question: Any, pattern: re.Pattern | None) -> str:
    question = _text(question, "empty prompt")
    if pattern is None:
        return question.strip()
    match = pattern.search(question)
    if match is None:
        raise _Bad("prompt_regex did not match")
    if "noun" in pattern.groupindex:
        noun = match.group("noun")
    else:
        noun = match.group(1) if pattern.groups else match.group(0)
    return _text(noun, "empty prompt").strip()


@_one_per_row
def _counting(ctx: _Context):
    col, regex = ctx.columns, ctx.options["prompt_regex"]
    pattern = re.compile(regex, re.IGNORECASE) if regex else None

    def build(record_id: str, row: Mapping) -> dict:
        count = _count(row.get(col["count"]))
        prompt = _noun(row.get(col["prompt"]), pattern)
        image = _read_image(row.get(col["image"]), ctx.image_dir)
        return _record(record_id, "counting", image, prompt, count)

    return build


def _target(task: str, value: Any, image: tuple[Any, int, int], layout: str) -> Any:
    if task == "grounding":
        return _pixel_box(value, image[1], image[2], layout)
    if task == "counting":
        return _count(value)
    return _text(value, "empty text")


@_one_per_row
def _columns(ctx: _Context):
    col, task = ctx.columns, ctx.task

    def build(record_id: str, row: Mapping) -> dict:
        prompt = row.get(col["prompt"]) if col["prompt"] else ""
        if task != "ocr":
            prompt = _text(prompt, "empty prompt").strip()
        elif not isinstance(prompt, str):
            prompt = ""
        image = _read_image(row.get(col["image"]), ctx.image_dir)
        target = _target(task, row.get(col["target"]), image, ctx.options["box"])
        return _record(record_id, task, image, prompt, target)

    return build


def _answer_parses(task: str, box_format: Any) -> Callable[[str], bool]:
    if task == "grounding":
        return lambda text: box_format.parse(text) is not None
    if task == "counting":
        from perpo.answers import parse_count

        return lambda text: parse_count(text) is not None
    return lambda text: bool(text.strip())


def _rewards(answers: Any, rewards: Any) -> list[float]:
    if not isinstance(answers, (list, tuple)) or not isinstance(rewards, (list, tuple)):
        raise _Bad("malformed list")
    if len(answers) != len(rewards):
        raise _Bad("answers/rewards length mismatch")
    if len(answers) < 2:
        raise _Bad("fewer than 2 answers")
    values = []
    for r in rewards:
        if r is None or (isinstance(r, float) and math.isnan(r)):
            raise _Bad("NaN reward")
        if not isinstance(r, numbers.Real) or isinstance(r, bool):
            raise _Bad("malformed list")
        values.append(min(1.0, max(0.0, float(r))))  # +-inf clip like any out-of-range reward
    return values


@_one_per_row
def _release_lists(ctx: _Context):
    from perpo.boxes import get_box_format

    col, task, prefix = ctx.columns, ctx.task, ctx.options["instruction_prefix"]
    parses = _answer_parses(task, get_box_format(ctx.options["box_format"]))

    def build(record_id: str, row: Mapping) -> dict:
        rewards = _rewards(row.get(col["answers"]), row.get(col["rewards"]))
        answers = [a if isinstance(a, str) else "" for a in row[col["answers"]]]
        prompt = strip_question(_text(row.get(col["question"]), "empty prompt"), prefix)
        if task != "ocr" and not prompt:
            raise _Bad("empty prompt")
        image = _read_image(row.get(col["image"]), ctx.image_dir)
        answer = row.get(col["answer"])
        if task == "grounding" and ctx.options["box_frame"] != "original":  # fractions of the padded square
            from perpo.boxes import from_frame

            answer = from_frame(_four_numbers(answer), ctx.options["box_frame"], image[1], image[2])
        target = _target(task, answer, image, "xyxy_norm")
        record = _record(record_id, task, image, prompt, target)
        record.update(answers=answers, rewards=rewards, parsed=[parses(a) for a in answers])
        return record

    return build


# ----- layouts -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Layout:
    name: str
    tasks: tuple[str, ...]
    columns: Mapping[str, str | None]  # role -> default source column
    required: tuple[str, ...]  # roles that must name a column
    options: Mapping[str, Any]  # adapter options and their defaults (format, cache_dir added)
    converter: Callable[[_Context], Callable]
    lists: bool = False  # output: stored lists (list_features) instead of records
    row_in_id: bool = False  # the id column repeats by design: append the row index


@dataclass
class _Context:
    layout: _Layout
    task: str
    columns: dict[str, str | None]
    options: dict[str, Any]
    image_dir: Path | None
    ids: _Ids


_COMMON_OPTIONS = {"format": None, "cache_dir": None}

_LAYOUTS = {
    layout.name: layout
    for layout in (
        _Layout("refcoco", ("grounding",),
                {"id": "question_id", "image": "image", "expressions": "answer", "bbox": "bbox"},
                ("image", "expressions", "bbox"), {"image_dir": None}, _refcoco),
        _Layout("ocr_pages", ("ocr",), {"id": None, "image": "image", "text": "text"},
                ("image", "text"), {"image_dir": None}, _ocr_pages),
        _Layout("counting", ("counting",),
                {"id": None, "image": "image", "prompt": "question", "count": "count"},
                ("image", "prompt", "count"), {"image_dir": None, "prompt_regex": None}, _counting),
        _Layout("release_lists", ("grounding", "ocr", "counting"),
                {"id": "image_id", "image": "image_path", "question": "question", "answer": "answer",
                 "answers": "answers_gen", "rewards": "iou_scores"},
                ("image", "question", "answer", "answers", "rewards"),
                {"image_dir": None, "instruction_prefix": GROUNDING_PREFIX, "box_format": "norm2",
                 "box_frame": "original", "format": "json"},
                _release_lists, lists=True, row_in_id=True),
        _Layout("columns", ("grounding", "ocr", "counting"),
                {"id": "id", "image": "image", "prompt": "prompt", "target": "target"},
                ("image", "target"), {"image_dir": None, "box": "xyxy_pixels"}, _columns),
    )
}


# ----- config -> source dataset --------------------------------------------------------------
_KEYS = ("adapter", "path", "splits", "columns", "options", "sizes")  # what adapters read


def _plain(cfg: Any) -> dict:
    """The keys adapters read, as plain values; a DictConfig's interpolations (``path:
    ${paths.root}/...``) resolved. Other keys (``min_margin: ${task.min_margin}``) are left
    alone: a detached ``data`` node cannot resolve them."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    plain = {}
    for key in _KEYS:
        if key in cfg:
            value = cfg[key]
            plain[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    return plain


def _merged(layout: _Layout, given: Any, defaults: Mapping, key: str) -> dict:
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise DataError(
            f"data.{key}: unknown key(s) {', '.join(unknown)} for adapter {layout.name!r}; "
            f"valid: {', '.join(sorted(defaults))}"
        )
    return {**defaults, **given}


def _source_split(data_cfg: Mapping, split: str) -> str:
    splits = data_cfg.get("splits")
    if not splits:
        return split
    if split not in splits:
        raise DataError(f"split {split!r} is not in data.splits; configured: {', '.join(map(str, splits))}")
    value = splits[split]
    return str(value.get("split", split)) if isinstance(value, Mapping) else str(value)


def _data_files(path: str, fmt: str | None, cache_dir: str | None) -> tuple[str, dict[str, list[str]], str]:
    """``(builder, source split -> data files, where)`` of a local file / folder / glob or hub id."""
    local = Path(path).expanduser()
    if local.is_file():
        return _format_of(local, fmt), {"train": [str(local)]}, str(local)
    if any(ch in path for ch in "*?[") and not local.exists():
        files = sorted(glob.glob(str(local)))
        if not files:
            raise DataError(f"data.path={path!r}: no file matches this pattern")
        return _format_of(Path(files[0]), fmt), {"train": files}, path
    if local.is_dir():
        source = fmt or str(local)
        kwargs = {"data_dir": str(local)} if fmt else {}
    elif _HUB_ID.fullmatch(path):
        source, kwargs = path, {}
    else:
        raise DataError(f"data.path={path!r} does not exist (and is not a hub id 'owner/name')")
    try:
        builder = datasets.load_dataset_builder(source, cache_dir=cache_dir, **kwargs)
    except Exception as e:
        what = "cannot open this folder" if local.is_dir() else (
            "not a local file or folder, and opening it as a hub dataset failed")
        raise DataError(f"data.path={path!r}: {what} ({type(e).__name__}: {e})") from e
    name = builder.name
    extensions = _EXTENSIONS.get(name)  # a folder may also hold images next to a JSONL file
    files = {
        str(split): [str(f) for f in found if extensions is None or str(f).endswith(extensions)]
        for split, found in (builder.config.data_files or {}).items()
    }
    return name, {split: found for split, found in files.items() if found}, path


def _format_of(file: Path, fmt: str | None) -> str:
    """A file's builder: its extension wins (``release.parquet`` with the json default), then ``fmt``."""
    for name, extensions in _EXTENSIONS.items():
        if file.name.endswith(extensions):
            return name
    if fmt:
        return fmt
    raise DataError(
        f"data.path={str(file)!r}: cannot tell the format from the file name; "
        f"set data.options.format to one of {', '.join(_EXTENSIONS)}"
    )


def _load_source(data_cfg: Mapping, split: str, options: Mapping) -> tuple[datasets.Dataset, str]:
    path = data_cfg.get("path")
    if not path:
        raise DataError("data.path is not set: give a local file / folder or a hub id")
    source_split = _source_split(data_cfg, split)
    builder, files, where = _data_files(str(path), options["format"], options["cache_dir"])
    if source_split not in files:
        raise DataError(
            f"split {source_split!r} (data.splits.{split}) not found in {where}; "
            f"available: {', '.join(sorted(files)) or 'none'}"
        )
    try:
        source = datasets.load_dataset(
            builder, data_files={source_split: files[source_split]}, split=source_split,
            cache_dir=options["cache_dir"],
        )
    except Exception as e:
        raise _unreadable(builder, files[source_split], source_split, where, e) from e
    label = ", ".join(files[source_split][:3]) + (", ..." if len(files[source_split]) > 3 else "")
    return source, label


def _unreadable(builder: str, files: list[str], split: str, where: str, err: Exception) -> DataError:
    """The DataError for a split ``datasets`` could not read: the file and line at fault where one
    is found (:mod:`perpo.data.files`), else the innermost error (pyarrow's, not ``datasets``' wrapper)."""
    problem = files_problem(builder, files)
    if problem:
        return DataError(f"cannot read split {split!r} of data.path={where}: {problem}")
    cause = root_cause(err)
    return DataError(f"cannot read split {split!r} of data.path={where} ({type(cause).__name__}: {cause})")


def _checked_columns(layout: _Layout, columns: dict, source: datasets.Dataset, where: str) -> None:
    for role in layout.required:
        if not columns.get(role):
            raise DataError(f"data.columns.{role} must name a column for adapter {layout.name!r}")
    for role, column in columns.items():
        if column and column not in source.column_names:
            raise DataError(
                f"column {column!r} (data.columns.{role}) not found by adapter {layout.name!r} "
                f"in {where}; available columns: {', '.join(source.column_names)}"
            )


def _capped(source: datasets.Dataset, sizes: Any, split: str) -> datasets.Dataset:
    cap = (sizes or {}).get(split)
    if cap is None or cap >= len(source):
        return source
    return source.select(range(int(cap)))


def _image_dir(option: Any, path: str) -> Path | None:
    if option:
        return Path(option).expanduser()
    local = Path(path).expanduser()
    if local.is_file():
        return local.parent
    return local if local.is_dir() else None


# ----- output ---------------------------------------------------------------------------------
def _generate(source, convert, ids, task, columns):
    """Yields every output row: records, and placeholders (``_skip`` = reason) for skipped ones."""
    for index, row in enumerate(source):
        try:
            items = list(convert(index, row))
        except Exception as e:  # a bug-shaped row (odd types) must not stop the whole split
            log.debug("row %d raised", index, exc_info=True)
            items = [_Skipped(ids.base(index, row), f"malformed row ({type(e).__name__})")]
        for item in items:
            if not isinstance(item, _Skipped):
                problem = validate_record(item)
                if problem is None:
                    yield {**item, "id": ids.unique(item["id"], index), _SKIP: ""}
                    continue
                item = _Skipped(item["id"], "invalid record")
            placeholder = dict.fromkeys(columns)
            placeholder.update(id=ids.unique(item.id, index), task=task)
            placeholder[_SKIP] = item.reason
            yield placeholder


def _module_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _features(layout: _Layout, task: str) -> datasets.Features:
    if layout.lists:
        from perpo.data.stored_lists import list_features

        return list_features(task)
    return features_for(task)


def _settings(layout: _Layout, data_cfg: Mapping, task: str) -> tuple[dict, dict, set]:
    """``(options, columns, roles the config named)`` with the layout's defaults filled in."""
    if task not in layout.tasks:
        raise DataError(f"adapter {layout.name!r} makes {' / '.join(layout.tasks)} records, not {task!r}")
    options = _merged(layout, data_cfg.get("options"), {**_COMMON_OPTIONS, **layout.options}, "options")
    columns = _merged(layout, data_cfg.get("columns"), layout.columns, "columns")
    if layout.name == "columns" and options["box"] not in _BOX_LAYOUTS:
        raise DataError(f"data.options.box={options['box']!r}; valid: {', '.join(_BOX_LAYOUTS)}")
    if layout.name == "release_lists":
        from perpo.boxes import BOX_FRAMES

        if options["box_frame"] not in BOX_FRAMES:
            raise DataError(f"data.options.box_frame={options['box_frame']!r}; valid: {', '.join(BOX_FRAMES)}")
    if layout.name == "columns" and task != "ocr" and not columns.get("prompt"):
        raise DataError(f"data.columns.prompt must name a column for task {task!r}")
    return options, columns, set(data_cfg.get("columns") or {})


def _materialize(ctx: _Context, source: datasets.Dataset, features: datasets.Features, fingerprint: str,
                 report: SkipReport) -> datasets.Dataset:
    """Runs the converter over ``source`` into Arrow, fills ``report``, drops the placeholders."""
    output = datasets.Dataset.from_generator(
        _generate,
        features=datasets.Features({**features, _SKIP: datasets.Value("string")}),
        gen_kwargs={"source": source, "convert": ctx.layout.converter(ctx), "ids": ctx.ids, "task": ctx.task,
                    "columns": tuple(features)},  # a list would be split into shards
        cache_dir=ctx.options["cache_dir"],
        fingerprint=fingerprint,
    )
    reasons = output.data.column(_SKIP).to_pylist()  # one cheap column, also on a cache hit
    report.total = len(reasons)
    for reason, record_id in zip(reasons, output.data.column("id").to_pylist()):
        if reason:
            report.add(reason, record_id)
    if report.skipped:
        output = output.select([i for i, reason in enumerate(reasons) if not reason])
    return output.remove_columns(_SKIP)


def _adapt(layout: _Layout, data_cfg: Mapping, split: str, task: str) -> tuple[datasets.Dataset, SkipReport]:
    """Load ``split`` with ``layout``; the shared body of every adapter."""
    data_cfg = _plain(data_cfg)
    options, columns, named = _settings(layout, data_cfg, task)
    source, where = _load_source(data_cfg, split, options)
    for role in set(columns) - set(layout.required) - named:  # an optional default may be absent
        if columns[role] not in source.column_names:
            columns[role] = None
    _checked_columns(layout, columns, source, where)
    source = _capped(source, data_cfg.get("sizes"), split)
    if isinstance(source.features.get(columns["image"]), datasets.Image):
        source = source.cast_column(columns["image"], datasets.Image(decode=False))  # we decode, guarded

    features = _features(layout, task)
    report = SkipReport(label=f"{layout.name} {split}")
    if len(source) == 0:
        return datasets.Dataset.from_dict({k: [] for k in features}, features=features), report
    image_dir = _image_dir(options["image_dir"], str(data_cfg["path"]))
    ctx = _Context(layout, task, columns, options, image_dir, _Ids(f"{layout.name}-{split}", columns.get("id")))
    fingerprint = _fingerprint(_module_digest(), layout.name, task, split, columns, options, str(image_dir),
                               source._fingerprint)
    return _materialize(ctx, source, features, fingerprint, report), report


def _adapter(layout: _Layout) -> Callable:
    def adapter(data_cfg: Mapping, split: str, *, task: str = layout.tasks[0]):
        return _adapt(layout, data_cfg, split, task)

    adapter.__name__ = adapter.__qualname__ = layout.name
    adapter.__doc__ = f"``(dataset, SkipReport)`` of ``split`` in the {layout.name!r} layout (module docstring)."
    return adapter


# name -> fn(data_cfg, split, *, task) -> (datasets.Dataset, SkipReport)
ADAPTERS: dict[str, Callable] = {name: _adapter(layout) for name, layout in _LAYOUTS.items()}


def _for_split(data_cfg: dict, split: str) -> dict:
    """``data_cfg`` with a per-split override (``splits.<split>`` as a mapping) applied."""
    value = (data_cfg.get("splits") or {}).get(split)
    if not isinstance(value, Mapping):
        return data_cfg
    base = dict(data_cfg)
    if value.get("adapter", base.get("adapter")) != base.get("adapter"):
        base.pop("columns", None)  # another adapter's column roles and options do not carry over
        base.pop("options", None)
    merged = {**base, **{k: v for k, v in value.items() if k != "split"}}
    merged["splits"] = {split: str(value.get("split", split))}
    return merged


def load_split(data_cfg: Mapping, split: str, *, task: str) -> tuple[datasets.Dataset, SkipReport]:
    """Records of our ``split`` (``train`` / ``val`` / ``test``) from the ``data`` config.

    Dispatches on ``data_cfg["adapter"]``, logs the skip summary and returns ``(dataset,
    report)``. Raises :class:`DataError` for an unknown adapter, an unreadable source, or a
    split whose every row was skipped.
    """
    cfg = _for_split(_plain(data_cfg), split)
    name = cfg.get("adapter")
    if name not in ADAPTERS:
        raise DataError(f"data.adapter={name!r} is not an adapter; valid: {', '.join(ADAPTERS)}")
    dataset, report = ADAPTERS[name](cfg, split, task=task)
    if report.total and not report.kept():
        raise DataError(f"no usable rows: {report.summary()}")
    (log.warning if report.skipped else log.info)(report.summary())
    return dataset, report
