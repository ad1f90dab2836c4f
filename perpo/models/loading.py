"""Load a vision-language model and its processor from a local path or a hub id.

The embedded tiny default goes through exactly this code: it is written to disk with
``save_pretrained`` first, then loaded like any checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from perpo.atomic import swap_folder_in

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names ``model.path`` and what to do."""


class ModelSettingError(ModelLoadError, ValueError):
    """A model setting (``model.dtype``, ``model.eos_token``) that does not fit the checkpoint."""


_REFETCH = "download it again (e.g. `hf download <id> --local-dir <dir>`) or save it again"
_WEIGHTS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json", "*.pt", "*.pth")


def check_model_folder(path: str | Path, key: str = "model.path") -> None:
    """Refuse, naming the file and the fix, a local ``model.path`` that cannot be a checkpoint of
    a vision-language model: a file, a folder without ``config.json`` (empty, or not a model), a
    ``config.json`` that is not JSON or not a model's, a text-only (or unknown) model type, no
    weights, or a truncated ``.safetensors`` file. A path that does not exist (a hub id) passes:
    loading names it. Reads the config and the safetensors headers only. ``key``: the config key
    that gave the path (``model.path``, ``eval.checkpoint``), named in every message."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    local = Path(path).expanduser()
    if not local.exists():
        return
    where = f"{key}={str(path)!r}"
    if not local.is_dir():
        hint = " (a Lightning .ckpt is resumed with ckpt_path=<file>, not loaded as a model)" if local.suffix == ".ckpt" else ""
        raise ModelLoadError(
            f"{where} is a file; it must be a checkpoint folder holding config.json and the weights, as "
            f"save_pretrained writes them{hint}"
        )
    config_file = local / "config.json"
    if not config_file.is_file():
        what = "is an empty folder" if not any(local.iterdir()) else "holds no config.json"
        raise ModelLoadError(
            f"{where} {what}: point it at a checkpoint folder (config.json, the weights, tokenizer and processor "
            "files), e.g. one saved by save_pretrained or `hf download <id> --local-dir <dir>`"
        )
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{where}: {config_file} is not valid JSON ({err}): it is damaged; {_REFETCH}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelLoadError(f"{where}: {config_file} has no model_type: it is not a transformers model config; {_REFETCH}")
    model_type = config["model_type"]
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        architectures = ", ".join(config.get("architectures") or []) or "no architectures listed"
        raise ModelLoadError(
            f"{where} holds a {model_type!r} model ({architectures}), not a vision-language model that "
            "transformers loads as image-text-to-text (AutoModelForImageTextToText): perpo needs images in, text "
            f"out; point {key} at a checkpoint of a supported family (conf/model/*.yaml)"
        )
    weights = [f for pattern in _WEIGHTS for f in local.glob(pattern)]
    if not weights:
        raise ModelLoadError(
            f"{where} has a config.json but no weights (model.safetensors or pytorch_model.bin): the download or "
            f"save did not finish; {_REFETCH}"
        )
    for file in sorted(local.glob("*.safetensors")):
        problem = _safetensors_problem(file)
        if problem:
            raise ModelLoadError(f"{where}: {file.name} {problem}; {_REFETCH}")


def _safetensors_problem(file: Path) -> str | None:
    """What is wrong with a .safetensors file's header or length (None: it looks whole)."""
    size = file.stat().st_size
    try:
        with file.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"is {size} bytes, too short for a safetensors file (truncated)"
            length = int.from_bytes(head, "little")
            if 8 + length > size:
                return f"is truncated: its header says {length} header bytes, the file has {size}"
            header = json.loads(f.read(length))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        return f"is not a readable safetensors file ({type(err).__name__}: {err})"
    if 8 + length + end > size:
        return f"is truncated: {size} bytes, its header needs {8 + length + end}"
    return None


def load_model(
    path: str | Path,
    *,
    dtype: str = "float32",
    attn_implementation: str | None = None,
    eos_token: str | None = None,
    key: str = "model.path",
):
    """(model, processor) via ``AutoModelForImageTextToText`` and :func:`load_processor`.

    ``key``: the config key that gave ``path`` (``model.path``, ``eval.checkpoint``): errors name it.

    ``eos_token`` overrides the tokenizer's EOS: the token that ends an answer, for chat models
    whose tokenizer EOS is not the end-of-turn token their template writes after an answer
    (``conf/model/<family>.yaml``: ``eos_token``). Generation stops at it and scoring appends it.
    """
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    if dtype not in DTYPES:
        raise ModelSettingError(f"model.dtype={dtype!r} is not known; choose one of {sorted(DTYPES)}")
    hf_logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    check_model_folder(path, key)
    local = Path(path).expanduser().is_dir()
    try:
        processor = load_processor(path)
        model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
    except OSError as err:  # no such folder, hub unreachable, not in the cache, missing files
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if local:
            raise ModelLoadError(
                f"{key}={str(path)!r} could not be loaded ({first}): a file of the checkpoint is missing "
                f"or damaged; {_REFETCH}"
            ) from err
        raise ModelLoadError(
            f"{key}={str(path)!r} could not be loaded: it is not a complete local checkpoint and "
            f"the hub copy is unreachable or missing here ({first}). Download it where "
            f"there is network (e.g. `hf download <id> --local-dir <dir>`) and set {key}=<dir>."
        ) from err
    except Exception as err:  # a local folder's damaged file: safetensors, tokenizer, processor errors
        if not local or isinstance(err, (MemoryError, torch.OutOfMemoryError)):
            raise
        first = str(err).splitlines()[0] if str(err) else ""
        raise ModelLoadError(
            f"{key}={str(path)!r} could not be loaded ({type(err).__name__}: {first}): a file of the "
            f"checkpoint is damaged or does not fit its config.json; {_REFETCH}"
        ) from err
    tok = processor.tokenizer
    if eos_token is not None:
        if tok.convert_tokens_to_ids(eos_token) in (None, tok.unk_token_id):
            raise ModelSettingError(f"model.eos_token={eos_token!r} is not a token of the tokenizer at {path}")
        tok.eos_token = eos_token
        model.generation_config.eos_token_id = tok.eos_token_id
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation pads on the left
    return model, processor


# -- processors without torchvision ------------------------------------------------------------

_IMAGE_ONLY: dict[type, type] = {}


def image_only_processor_class(cls: type) -> type:
    """``cls`` (a transformers processor class) without its video processor.

    The Qwen-VL, LLaVA-OneVision and SmolVLM processors take a ``video_processor`` whose
    transformers classes need ``torchvision``; ``AutoProcessor`` then fails on a machine without
    it (``OSError: Can't load video processor``), although perpo only ever passes images. The
    returned subclass has the same ``__init__`` minus ``video_processor`` (so ``from_pretrained``
    loads only the tokenizer and the image processor -- the PIL image processor class when
    torchvision is absent -- and keeps every other processor setting), the same class name (so
    ``save_pretrained`` writes a ``processor_config.json`` that plain ``AutoProcessor`` loads), and
    is an instance of ``cls`` for every ``isinstance`` check. Calling it with ``videos=`` fails.
    Classes without a video processor are returned unchanged.
    """
    import inspect

    if cls in _IMAGE_ONLY or getattr(cls, "_perpo_image_only", False):
        return _IMAGE_ONLY.get(cls, cls)
    signature = inspect.signature(cls.__init__)
    if "video_processor" not in signature.parameters:
        return cls

    __init__ = _init_without_video(cls, signature)

    def save_pretrained(self, save_directory, *args, **kwargs):
        out = cls.save_pretrained(self, save_directory, *args, **kwargs)
        settings = getattr(self, "_perpo_video_config", None)  # the checkpoint's video settings, kept
        target = Path(save_directory) / VIDEO_CONFIG
        if settings and not target.exists():
            target.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        return out

    sub = type(
        cls.__name__,
        (cls,),
        {
            "__init__": __init__,
            "save_pretrained": save_pretrained,
            # Read by a few processor methods even for image-only calls (SmolVLM's
            # apply_chat_template reads video_processor.num_frames); never saved.
            "video_processor": NoVideoProcessor(),
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": f"{cls.__name__} without its video processor (perpo.models.loading.image_only_processor_class).",
            "_perpo_image_only": True,
        },
    )
    _IMAGE_ONLY[cls] = sub
    return sub


VIDEO_CONFIG = "video_preprocessor_config.json"


class NoVideoProcessor:
    """The ``video_processor`` of an image-only processor: every setting reads ``None``, a call fails."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return None

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            "this processor was loaded without its video processor (torchvision is not installed); "
            "perpo passes images only -- install torchvision to process videos"
        )

    def __repr__(self) -> str:
        return "NoVideoProcessor()"


def _init_without_video(cls: type, signature) -> Any:
    """``cls.__init__`` minus its ``video_processor`` parameter, as real code.

    A real parameter list (not ``*args, **kwargs``) is needed: ``ProcessorMixin`` reads the
    accepted keyword arguments from ``__init__.__code__`` (``from_args_and_dict``) and the
    sub-processor attributes from its signature (``get_attributes``).
    """
    import inspect

    params = [p for name, p in signature.parameters.items() if name != "video_processor"]
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    head, call = [], []
    for p in params[1:]:
        if p.kind is inspect.Parameter.KEYWORD_ONLY and "*" not in head:
            head.append("*")
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            head.append(f"**{p.name}")
            call.append(f"**{p.name}")
        elif p.kind is inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(f"{cls.__name__}.__init__ takes *{p.name}; cannot drop its video processor")
        else:
            head.append(f"{p.name}=_defaults[{p.name!r}]" if p.name in defaults else p.name)
            call.append(f"{p.name}={p.name}")
    # The parent hands (image_processor, tokenizer, None) to ProcessorMixin, which pairs them with
    # this class's attributes (image_processor, tokenizer) and drops the trailing None.
    source = (
        f"def __init__(self, {', '.join(head)}):\n"
        f"    _parent_init(self, video_processor=None, {', '.join(call)})\n"
    )
    namespace: dict[str, Any] = {"_defaults": defaults, "_parent_init": cls.__init__}
    exec(source, namespace)  # noqa: S102 - source built from the parent's own parameter names
    return namespace["__init__"]


def processor_class_for(path: str | Path) -> type | None:
    """The processor class ``AutoProcessor`` would pick for the checkpoint at ``path``."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    config = AutoConfig.from_pretrained(str(path))
    name = PROCESSOR_MAPPING_NAMES.get(config.model_type)
    return getattr(transformers, name, None) if isinstance(name, str) else None


def load_processor(path: str | Path):
    """``AutoProcessor.from_pretrained(path)``, or the image-only processor where that cannot work.

    A checkpoint whose processor has a video processor (Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
    LLaVA-OneVision, SmolVLM) is loaded through :func:`image_only_processor_class` -- same
    tokenizer, image processor (the PIL class without torchvision), chat template and settings,
    no video processor -- when torchvision is not installed (the video processor classes need
    it) or when the checkpoint holds no video processor settings (perpo's tiny instances).
    Otherwise, and for every other family, this is exactly ``AutoProcessor``. A hub id and a
    local folder behave the same. The image-only processor keeps the checkpoint's video settings
    and writes them back in ``save_pretrained``, so what it saves loads with plain
    ``AutoProcessor`` on a machine with torchvision.
    """
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    cls = processor_class_for(path)
    image_only = image_only_processor_class(cls) if cls is not None else None
    if image_only is not None and image_only is not cls:
        video = _video_processor_settings(path)
        if not is_torchvision_available() or video is None:
            processor = image_only.from_pretrained(str(path))
            processor._perpo_video_config = video
            return processor
    return AutoProcessor.from_pretrained(str(path))


def _video_processor_settings(path: str | Path) -> dict | None:
    """The checkpoint's video processor settings, found as transformers looks for them: nested in
    ``processor_config.json``, else ``video_preprocessor_config.json``, else
    ``preprocessor_config.json``; ``None`` if there are none."""
    from transformers.utils import cached_file

    def read(name: str) -> dict | None:
        file = cached_file(
            str(path), name, _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )  # fmt: skip
        return json.loads(Path(file).read_text()) if file else None

    nested = (read("processor_config.json") or {}).get("video_processor")
    if isinstance(nested, dict):
        return nested
    return read(VIDEO_CONFIG) or read("preprocessor_config.json")


def atomic_save_pretrained(model, processor, path: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """Write to a temporary sibling folder, then rename: a crash never leaves half a checkpoint.

    ``processor`` may be ``None`` (model only). ``extra_files``: file name -> text, written beside
    the weights (e.g. the warm start's own record, ``warmstart.json``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        swap_folder_in(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def ensure_tiny(path: str | Path, *, seed: int = 0, **arch) -> Path:
    """Build the embedded tiny model at ``path`` unless it is already there."""
    from perpo.models.tiny import build_model, build_processor

    path = Path(path)
    if (path / "config.json").exists():
        return path
    log.info("building the embedded tiny VLM at %s", path)
    processor = build_processor(image_size=arch.get("image_size", 64), patch_size=arch.get("patch_size", 8))
    model = build_model(processor.tokenizer, seed=seed, **arch)
    return atomic_save_pretrained(model, processor, path)


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in backward (transformers >= 5 names it activation checkpointing)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
