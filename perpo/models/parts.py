"""The three parts of a VLM -- vision tower, projector, language model ("rest") -- found by
module path, one rule for every family; and the optimizer groups and freezing built on them.

A name's dot-separated components decide: a projector component (LLaVA / Gemma 3
``multi_modal_projector``, Qwen-VL ``visual.merger`` / ``deepstack_merger_list``, Idefics3 /
SmolVLM ``connector``) wins over a vision component (``vision_tower``, ``visual``,
``vision_model``), so Qwen's merger inside ``visual`` is a projector.
"""

from __future__ import annotations

import torch

#: Module-path components of vision towers (LLaVA / Gemma 3, Qwen-VL, Idefics3 / SmolVLM).
VISION_TOWER_NAMES = frozenset({"vision_tower", "visual", "vision_model"})
#: Module-path components of projectors (LLaVA / Gemma 3, Qwen-VL mergers, Idefics3 / SmolVLM).
PROJECTOR_NAMES = frozenset({"multi_modal_projector", "merger", "deepstack_merger_list", "connector"})


def is_projector(name: str) -> bool:
    """Whether the module / parameter ``name`` belongs to the projector (vision -> text)."""
    return any(part in PROJECTOR_NAMES for part in name.split("."))


def is_vision_tower(name: str) -> bool:
    """Whether ``name`` belongs to the vision tower (projectors excluded, even Qwen's ``visual.merger``)."""
    return not is_projector(name) and any(part in VISION_TOWER_NAMES for part in name.split("."))


def part_of(name: str) -> str:
    """Which part of a VLM a parameter belongs to: ``projector``, ``vision`` or ``rest``."""
    if is_projector(name):
        return "projector"
    return "vision" if is_vision_tower(name) else "rest"


def freeze_vision_tower(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        if part_of(name) == "vision":
            p.requires_grad_(False)


def param_groups(model: torch.nn.Module, *, lr: float, projector_lr: float | None = None, vision_lr: float | None = None) -> list[dict]:
    """AdamW groups: vision tower, projector and the rest, each with its own learning rate.

    ``vision_lr=0`` freezes the vision tower (its parameters get ``requires_grad=False``).
    """
    if vision_lr == 0:
        freeze_vision_tower(model)
    parts: dict[str, list] = {"rest": [], "projector": [], "vision": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            parts[part_of(name)].append(p)
    rates = {"rest": lr, "projector": projector_lr, "vision": vision_lr}
    return [
        {"params": params, "lr": lr if rates[part] is None else rates[part]}
        for part, params in parts.items()
        if params or part == "rest"
    ]
