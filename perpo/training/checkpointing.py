"""Checkpoints that survive what long runs meet: atomic writes, SIGTERM, exact resume.

- Lightning's ``ModelCheckpoint`` saves ``<run>/checkpoints/last.ckpt`` every
  ``checkpoint.every_n_steps`` optimizer steps and at the end;
  :class:`AtomicCheckpointIO` writes each file to a temporary name and renames it, so a crash
  mid-write leaves the previous checkpoint intact (never a truncated one). Strategies whose
  checkpoint is a folder of per-rank shards (DeepSpeed, FSDP ``state_dict_type: sharded``) write
  it beside the old one, and rank 0 swaps it in (:func:`save_checkpoint_atomically`).
- SIGTERM (what SLURM and Kubernetes send before a kill): Lightning's signal handler lets the
  current step finish and raises ``SIGTERMException``; :class:`SaveOnSigterm` then writes
  ``last.ckpt`` and the run exits with code 143 and says how to resume.
- ``resume=true`` (same ``hydra.run.dir``) or ``ckpt_path=<file>``: Lightning restores step,
  optimizer, scheduler and loop progress; ``PerPOModule`` restores the RNG states and counters;
  ``RecordDataModule``'s loader restores the position in the epoch. A run killed (even with
  SIGKILL) and resumed ends with the same weights as one never interrupted. A checkpoint that is
  empty, truncated, not a torch file or not train.py's is a :class:`ResumeError` naming it
  (:func:`check_checkpoint` before the run starts, :class:`AtomicCheckpointIO` when it loads).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from omegaconf import DictConfig

from perpo.atomic import atomic_write, swap_folder_in
from perpo.config import strategy_name

log = logging.getLogger(__name__)

LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file in the same folder, then rename over the target."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # Our own checkpoints hold RNG states (numpy arrays, Python tuples): not weights-only.
        try:
            checkpoint = torch.load(path, map_location=map_location or "cpu", weights_only=False)
        except Exception as err:  # torch raises RuntimeError / UnpicklingError / EOFError on damaged files
            raise ResumeError(
                f"checkpoint {path} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}): "
                f"it is damaged; {_OTHER_CHECKPOINT}"
            ) from err
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ResumeError(f"{path} is a torch file but not a checkpoint train.py wrote (no state_dict); {_OTHER_CHECKPOINT}")
        return checkpoint


def writes_directory(strategy) -> bool:
    """Whether the strategy's checkpoint is a folder every rank writes its shard into."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    if isinstance(strategy, DeepSpeedStrategy):
        return True
    return isinstance(strategy, FSDPStrategy) and getattr(strategy, "_state_dict_type", "full") == "sharded"


def save_checkpoint_atomically(trainer: L.Trainer, path: str | Path, save: Any = None) -> None:
    """``trainer.save_checkpoint(path)`` that never leaves a half-written checkpoint at ``path``.

    One file: AtomicCheckpointIO renames it into place. A folder of shards: every rank writes into
    ``<path>.tmp``; then rank 0 moves the old folder to ``<path>.old``, the new one to ``path``, and
    deletes the old. A crash in between leaves ``<path>.old``, which :func:`resume_path` takes.
    """
    import shutil

    save = save or trainer.save_checkpoint
    path = Path(path)
    if not writes_directory(trainer.strategy):
        save(path)
        return
    tmp = path.with_name(path.name + ".tmp")
    if trainer.is_global_zero and tmp.exists():
        shutil.rmtree(tmp)  # a crashed earlier write
    trainer.strategy.barrier()
    save(tmp)
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        swap_folder_in(tmp, path)
    trainer.strategy.barrier()


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, whose saves go through :func:`save_checkpoint_atomically`."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        save_checkpoint_atomically(trainer, filepath, lambda path: super(AtomicModelCheckpoint, self)._save_checkpoint(trainer, str(path)))
        self._last_checkpoint_saved = filepath


class SaveOnSigterm(L.Callback):
    """On SIGTERM, write ``last.ckpt`` once the running step has finished (Lightning raises
    ``SIGTERMException`` between steps, so the saved state is consistent)."""

    def __init__(self, dirpath: str | Path):
        self.path = Path(dirpath) / LAST

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            save_checkpoint_atomically(trainer, self.path)
            log.warning("SIGTERM at step %d: checkpoint saved to %s", trainer.global_step, self.path)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def periodic_checkpoint(run_dir: str | Path, every_n_steps: int | None, keep_all: bool = False) -> ModelCheckpoint:
    """``last.ckpt`` every ``every_n_steps`` steps and at the end (``keep_all``: also ``step=K.ckpt``)."""
    return AtomicModelCheckpoint(
        dirpath=checkpoint_dir(run_dir), filename="{step}", every_n_train_steps=every_n_steps or None,
        save_last=True, save_top_k=-1 if keep_all else 0, save_on_train_epoch_end=False,
    )  # fmt: skip


class ResumeError(ValueError):
    """``resume=true`` / ``ckpt_path`` point at nothing usable: names the path."""


def check_same_model(saved: dict, own: dict) -> None:
    """Refuse, naming the first parameter that differs, a checkpoint written for another model
    (another ``model.*`` / ``model.arch`` / LoRA setting): torch's own message is a wall of size
    mismatches. Shapes are compared where both hold a parameter (a sharded strategy's empty local
    shards and the reference's weights, left out of checkpoints, are not)."""
    if not saved:  # DeepSpeed keeps the weights in its own files: its loader compares them
        return
    policy = [k for k in own if k.startswith("policy.")]
    missing = [k for k in policy if k not in saved]
    extra = [k for k in saved if k.startswith("policy.") and k not in own]
    if missing or extra:
        names = (f"this model's {missing[0]!r} is not in it" if missing else "") + (
            f"{'; ' if missing else ''}it holds {extra[0]!r}, which this model has not" if extra else ""
        )
        raise ResumeError(
            f"the checkpoint was written for another model ({len(missing)} parameter(s) missing, {len(extra)} unknown: "
            f"{names}); resume with the model.* settings (model, model.arch, model.lora) of the run that wrote it"
        )
    for key, value in saved.items():
        mine = own.get(key)
        if mine is None or not hasattr(value, "shape") or mine.numel() == 0:
            continue
        if tuple(value.shape) != tuple(mine.shape):
            raise ResumeError(
                f"the checkpoint was written for another model: {key} has shape {tuple(value.shape)} there and "
                f"{tuple(mine.shape)} here; resume with the model.* settings (model, model.arch, model.lora) of the "
                "run that wrote it"
            )


_OTHER_CHECKPOINT = (
    "resume from another checkpoint (ckpt_path=<run>/checkpoints/step=K.ckpt when checkpoint.keep_all was on) "
    "or start afresh without resume / ckpt_path"
)


def check_checkpoint(path: str | Path, label: str) -> None:
    """Refuse, naming ``label`` (the setting and the path), a checkpoint that cannot be one
    train.py wrote: an empty file or folder, or a file that is not a complete torch archive
    (truncated: its zip directory, written last, is missing); in a folder of shards (DeepSpeed),
    every ``*.pt`` shard is checked so, and the damaged one named. Reads only the archives'
    directories, not the weights; :class:`AtomicCheckpointIO` refuses the rest when it loads."""
    path = Path(path)
    if path.is_dir():  # a folder of shards (DeepSpeed, FSDP sharded)
        if not any(path.iterdir()):
            raise ResumeError(f"{label} is an empty folder, not a checkpoint; {_OTHER_CHECKPOINT}")
        for shard in sorted(path.rglob("*.pt")):
            _check_torch_file(shard, f"{label}: its shard {shard.relative_to(path)}")
        return
    _check_torch_file(path, label)


def _check_torch_file(path: Path, label: str) -> None:
    import zipfile

    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as err:
        raise ResumeError(f"{label} cannot be read ({err.strerror or err})") from None
    if not head:
        raise ResumeError(f"{label} is an empty file, not a checkpoint; {_OTHER_CHECKPOINT}")
    if head[:1] == b"\x80":  # torch's legacy (pre-zip) format: a pickle; torch.load checks it
        return
    if head != b"PK\x03\x04":
        raise ResumeError(
            f"{label} is not a checkpoint (not a torch file; it starts with {head!r}): pass the "
            f"last.ckpt or step=K.ckpt train.py wrote under <run>/checkpoints/"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as err:
        raise ResumeError(f"{label} is damaged, e.g. truncated by a full disk or a partial copy ({err}); {_OTHER_CHECKPOINT}") from None
    if not any(name.endswith("data.pkl") for name in names):
        raise ResumeError(f"{label} is a zip archive but not a torch checkpoint (no data.pkl); {_OTHER_CHECKPOINT}")


def resume_path(run_dir: str | Path, resume: bool, ckpt_path: str | None) -> str | None:
    """The checkpoint to continue from, or None for a fresh run; refuses one that is damaged
    (:func:`check_checkpoint`)."""
    if ckpt_path:
        if not Path(ckpt_path).exists():  # a file, or a folder of shards (DeepSpeed, FSDP sharded)
            raise ResumeError(f"ckpt_path={ckpt_path}: no such checkpoint file or folder")
        check_checkpoint(ckpt_path, f"ckpt_path={ckpt_path}")
        return str(ckpt_path)
    if not resume:
        return None
    last = checkpoint_dir(run_dir) / LAST
    old = last.with_name(LAST + ".old")
    if not last.exists() and old.exists():  # killed while swapping a new folder checkpoint in
        log.warning("resuming from %s: the newer checkpoint was not complete", old)
        check_checkpoint(old, f"resume=true: {old}")
        return str(old)
    if not last.exists():
        raise ResumeError(
            f"resume=true but {last} does not exist: pass the run's folder as hydra.run.dir=<run dir> "
            "(the one holding checkpoints/), or a file as ckpt_path=<file>"
        )
    check_checkpoint(last, f"resume=true: {last}")
    return str(last)


_SHARDED = ("deepspeed", "fsdp")  # strategies with their own (sharded) checkpoint writers; FSDP "full": one file


def checkpoint_trainer_kwargs(cfg: DictConfig, out_dir: Path) -> dict:
    """Trainer keyword arguments for checkpoints: atomic writes unless the strategy shards them."""
    ck = cfg.get("checkpoint") or {}
    enabled = bool(ck.get("enabled", True))
    kwargs: dict = {"enable_checkpointing": enabled}
    name = strategy_name(cfg.trainer)
    strategy = cfg.trainer.get("strategy")
    one_file = "fsdp" in name and strategy.get("state_dict_type", "full") == "full"  # gathered on rank 0
    if enabled and (one_file or not any(s in name for s in _SHARDED)):
        kwargs["plugins"] = [AtomicCheckpointIO()]
    return kwargs


def checkpoint_callbacks(cfg: DictConfig, out_dir: Path) -> list:
    ck = cfg.get("checkpoint") or {}
    if not ck.get("enabled", True):
        return []
    every = ck.get("every_n_steps")
    return [
        periodic_checkpoint(out_dir, int(every) if every else None, bool(ck.get("keep_all", False))),
        SaveOnSigterm(checkpoint_dir(out_dir)),
    ]


def rng_states() -> dict:
    import random

    import numpy as np

    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
