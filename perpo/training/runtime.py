"""Where a run executes: its rank, its device, its logger."""

from __future__ import annotations

import logging
import os

from hydra.utils import instantiate
from omegaconf import DictConfig


def build_logger(cfg: DictConfig):
    if not cfg.get("logger") or not cfg.logger.get("_target_"):
        return False
    return instantiate(cfg.logger)


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0


def device_for(cfg: DictConfig) -> str:
    import torch

    wants_gpu = cfg.trainer.get("accelerator", "cpu") in ("gpu", "cuda", "auto")
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip:" not in str(record.msg)


def print_each_line_once() -> None:
    """Console hygiene for the commands: Lightning's loggers print through their own handler
    and then, propagating, through the root handlers Hydra configured -- every line twice.
    Their own handlers go, so each line is printed once, by Hydra's handlers (console and the
    run's log file); Lightning's advertising tips are dropped. Without root handlers (no Hydra)
    nothing changes."""
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    tips = _DropLightningTips()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _DropLightningTips) for f in handler.filters):
            handler.addFilter(tips)

