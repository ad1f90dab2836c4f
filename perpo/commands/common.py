"""What the commands (train, evaluate, sample) share: the configured splits, reward and base.

Each takes the composed Hydra config and returns plain values; the commands call them in order.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from perpo.data import make_splits
from perpo.data.box_space import with_box_space
from perpo.models.loading import load_model
from perpo.prompting import ChatFamily
from perpo.rewards import get_reward

log = logging.getLogger(__name__)


class Splits(dict):
    """split name -> records; ``reports``: per split, the rows a data adapter skipped and why."""

    reports: dict


def build_splits(cfg: DictConfig, only: list[str] | None = None) -> Splits:
    """train/val/test records for the configured task: synthetic (disjoint seeds), or read by a
    data adapter (``data.adapter``: RefCOCO, OCR pages, counting, the release's lists, your columns).

    With an adapter, ``eval.split`` may also name a split of the source itself
    (``evaluate.py data=refcoco eval.split=testB``); ``only`` reads just those splits."""
    if cfg.data.get("adapter"):
        from perpo.data.adapters import load_split

        data = OmegaConf.to_container(cfg.data, resolve=True)
        if cfg.eval.split not in data["splits"]:  # a split of the source, read as it is named
            data["splits"][cfg.eval.split] = cfg.eval.split
        splits, reports = Splits(), {}
        for name in only or data["splits"]:
            splits[name], report = load_split(data, name, task=cfg.task.name)
            reports[name] = {"total": report.total, "skipped": report.counts, "examples": report.examples}
        splits.reports = reports
        return splits
    sizes = OmegaConf.to_container(cfg.data.sizes)
    options = OmegaConf.to_container(cfg.task.generator)
    splits = Splits(make_splits(cfg.task.name, sizes, seed=int(cfg.data.seed), **options))
    splits.reports = {}
    return splits


def blank_where_asked(cfg: DictConfig, splits):
    """``data.blank_image``: alignment data (train, val) blank; ``eval.blank_image``: the eval split."""
    from perpo.data.blank import blank_images

    splits = dict(splits)
    names = {cfg.eval.split} if cfg.eval.get("blank_image") else set()
    if cfg.data.get("blank_image"):
        names |= {"train", "val"} & set(splits)
    for name in sorted(names):
        log.info("split %s: every image replaced by a blank one", name)
        splits[name] = blank_images(splits[name])
    return splits


def build_reward(cfg: DictConfig):
    """The configured reward as ``fn(completion, record) -> float | None``."""
    if cfg.reward.get("fn") is not None:  # a user's own function: reward.fn._target_=pkg.mod.fn
        try:
            return instantiate(cfg.reward.fn, _partial_=True)
        except Exception as err:  # hydra's InstantiationException: the import error is its cause
            from perpo.config import ConfigError

            cause = err.__cause__ or err
            raise ConfigError(
                f"reward.fn._target_={cfg.reward.fn.get('_target_')!r} cannot be used as the reward "
                f"({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}): name a function "
                "as package.module.function, importable from where you run (on PYTHONPATH)"
            ) from err
    from functools import partial

    params = cfg.reward.get("params")
    params = {} if params is None else OmegaConf.to_container(params, resolve=True)
    return partial(get_reward(cfg.reward.name), **params)


def load_base(cfg: DictConfig, path: Path, splits, key: str = "model.path"):
    """(model, processor, family, splits with their box space) for the checkpoint at ``path``,
    given by the config key ``key`` (named in load errors)."""
    model, processor = load_model(
        path, dtype=cfg.model.dtype, attn_implementation=cfg.model.get("attn_implementation"),
        eos_token=cfg.model.get("eos_token"), key=key,
    )  # fmt: skip
    family = ChatFamily(
        processor, cfg.model.box_format, system_prompt=cfg.model.get("system_prompt"), box_frame=cfg.model.get("box_frame", "original")
    )
    return model, processor, family, with_box_space(splits, processor, cfg.model.box_format)


def format_metrics(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
