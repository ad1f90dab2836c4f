"""Atomic writes: write to a temporary file (or folder) beside the target, then rename it in.

A reader (or a run restarted after a crash) sees the old file or the new one, never a half
written one. Used for every file a user keeps: results, evaluations, stored lists, checkpoints,
sweep summaries, report tables and figures. No torch import here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | Path, write: Callable[[str], None], suffix: str = "") -> None:
    """``write(tmp_path)`` fills a temporary file next to ``path``, which then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def write_json_atomic(path: str | Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=str))


def swap_folder_in(new: str | Path, path: str | Path) -> None:
    """Put the finished folder ``new`` at ``path`` (same parent folder: renames are atomic).

    The old folder is first renamed to ``<path>.old``, then ``new`` to ``path``, then the old one
    is deleted: at no moment is the only copy gone. A crash in between leaves ``<path>.old``,
    which a resume can take (:func:`perpo.training.checkpointing.resume_path` does)."""
    new, path = Path(new), Path(path)
    old = path.with_name(path.name + ".old")
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
    new.rename(path)
    if old.exists():
        shutil.rmtree(old)

