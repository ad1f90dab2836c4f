"""Load a vision-language model and its processor from a local path or a hub id.

The embedded tiny default goes through exactly this code: it is written to disk with
``save_pretrained`` first, then loaded like any checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(path: str | Path, *, dtype: str = "float32", attn_implementation: str | None = None):
    """(model, processor) via ``AutoModelForImageTextToText`` and ``AutoProcessor``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r} is not known; choose one of {sorted(DTYPES)}")
    hf_logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    processor = AutoProcessor.from_pretrained(str(path))
    model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
    if processor.tokenizer.pad_token_id is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    processor.tokenizer.padding_side = "left"  # generation pads on the left
    return model, processor


def atomic_save_pretrained(model, processor, path: str | Path) -> Path:
    """Write to a temporary sibling folder, then rename: a crash never leaves half a checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
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
