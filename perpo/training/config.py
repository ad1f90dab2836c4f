"""Typed settings of the training module, every field documented (trl's ``DPOConfig`` style).

:func:`module_kwargs` is the one place where the composed Hydra config becomes these
dataclasses; ``__post_init__`` refuses a bad value naming its config key and what to change.
(The start-up checks that need no torch run earlier, in :mod:`perpo.config`.)"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from perpo.sampling.generation import SamplingConfig


class SettingError(ValueError):
    """A training setting that cannot work; the message names the config key."""


@dataclass
class OptimConfig:
    """AdamW and its schedule (config group ``optim``, and ``warmstart`` for the SFT warm start)."""

    lr: float = field(default=3e-4, metadata={"help": "learning rate of the language model (and of every part without its own rate)"})
    projector_lr: float | None = field(default=None, metadata={"help": "projector learning rate; None: same as lr"})
    vision_lr: float | None = field(default=None, metadata={"help": "vision tower learning rate; None: same as lr, 0: frozen (paper)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "AdamW betas"})
    scheduler: str = field(default="cosine", metadata={"help": "any name of transformers.get_scheduler"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps of the schedule"})

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if not self.lr > 0:
            raise SettingError(f"optim.lr={self.lr}: a learning rate must be > 0")
        for key in ("projector_lr", "vision_lr"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise SettingError(f"optim.{key}={value}: must be >= 0 (0 freezes that part)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise SettingError(f"optim.betas={list(self.betas)}: two numbers in [0, 1)")
        if self.warmup_steps < 0:
            raise SettingError(f"optim.warmup_steps={self.warmup_steps}: must be >= 0")


@dataclass
class ListConfig:
    """How the lists of one training step are made and filtered."""

    listsize: int = field(default=8, metadata={"help": "answers sampled per prompt (N; config key listsize)"})
    min_margin: float = field(default=0.1, metadata={"help": "a list is kept when best - worst reward >= this (data.min_margin)"})
    max_empty_steps: int = field(default=20, metadata={"help": "consecutive steps with every list dropped before TrainingCollapsed (data.max_empty_steps)"})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "temperature, top_p, max_new_tokens, seed"})

    def __post_init__(self):
        # listsize >= 2 is checked by perpo.config for the list losses (SFT samples no lists)
        if self.min_margin < 0:
            raise SettingError(f"data.min_margin={self.min_margin}: must be >= 0")
        if self.max_empty_steps < 1:
            raise SettingError(f"data.max_empty_steps={self.max_empty_steps}: must be >= 1")


def optim_config(node: DictConfig | dict) -> OptimConfig:
    """An :class:`OptimConfig` from the keys of ``node`` that it knows (``optim`` or ``warmstart``)."""
    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    return OptimConfig(**{f.name: values[f.name] for f in fields(OptimConfig) if values.get(f.name) is not None})


def module_kwargs(cfg: DictConfig, *, max_new_tokens: int, stored_lists: bool) -> dict[str, Any]:
    """Keyword arguments of :class:`perpo.training.module.PerPOModule` from the composed config."""
    return {
        "loss": cfg.loss.name,
        "beta": float(cfg.beta),
        "gamma": cfg.margin.gamma,
        "margin": cfg.margin.kind,
        "lists": ListConfig(
            listsize=int(cfg.listsize),
            min_margin=float(cfg.data.min_margin),
            max_empty_steps=int(cfg.data.max_empty_steps),
            sampling=SamplingConfig(
                float(cfg.sampling.temperature), float(cfg.sampling.top_p), max_new_tokens, seed=int(cfg.seed)
            ),
        ),
        "optim": optim_config(cfg.optim),
        "reference": cfg.reference,
        "length_normalize": bool(cfg.loss.get("length_normalize", False)),
        "scoring": cfg.get("scoring", "auto"),
        "stored_lists": stored_lists,
    }
