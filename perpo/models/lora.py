"""LoRA on the language model of any supported family (peft), and exporting the trained policy.

The paper trains LoRA (r 128, alpha 256) on the language model with the vision tower frozen.
:func:`apply_lora` does that for every family in :mod:`perpo.models.families`: by default it
targets every linear layer of the language model (found by module path, so it holds for LLaVA's
``language_model``, Idefics3/SmolVLM's ``text_model`` and the Qwen-VL layouts alike), never the
vision tower nor the output head. The projector is trained in full when ``projector_trainable``:
it is a peft ``modules_to_save`` module, so its trained copy is saved with the adapter and the
untouched original is what the model uses with the adapter disabled -- which makes the
``adapter_off`` reference (:mod:`perpo.training.reference`) exactly the starting policy.

At initialisation LoRA's B matrices are zero, so the wrapped model computes exactly what the
base model does.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from perpo.models.parts import PROJECTOR_NAMES, VISION_TOWER_NAMES, is_projector, is_vision_tower

__all__ = [
    "PROJECTOR_NAMES",
    "VISION_TOWER_NAMES",
    "apply_lora",
    "export_policy",
    "is_lora",
    "is_projector",
    "is_vision_tower",
    "language_linear_layers",
]

def _output_head_names(model: torch.nn.Module) -> set[str]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {n for n, m in model.named_modules() if head is not None and m is head}


def language_linear_layers(model: torch.nn.Module) -> list[str]:
    """Full names of the language model's ``nn.Linear`` layers (no vision, projector or output head)."""
    heads = _output_head_names(model)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and name not in heads
        and not is_vision_tower(name)
        and not is_projector(name)
    ]


def _compact_pattern(names: Sequence[str], all_names: Sequence[str]) -> str | list[str]:
    """A regex matching exactly ``names`` among ``all_names``: "<root>.<anything>.<leaf>".

    Keeps ``adapter_config.json`` short (a 7B model has ~220 target layers); falls back to the
    explicit list when no such pattern is exact.
    """
    if not names:
        return list(names)
    split = [n.split(".") for n in names]
    root: list[str] = []
    for parts in zip(*[s[:-1] for s in split]):
        if len(set(parts)) != 1:
            break
        root.append(parts[0])
    leaves = sorted({s[-1] for s in split})
    pattern = (
        rf"^{re.escape('.'.join(root))}\..*\.(?:{'|'.join(map(re.escape, leaves))})$"
        if root
        else rf"^.*\.(?:{'|'.join(map(re.escape, leaves))})$"
    )
    matched = {n for n in all_names if re.fullmatch(pattern, n)}
    return pattern if matched == set(names) else list(names)


def _units(model: torch.nn.Module, keep) -> list[str]:
    """Top-most modules whose names satisfy ``keep``; ModuleLists are replaced by their items."""
    out: list[str] = []
    for name, module in model.named_modules():
        if not name or not keep(name) or any(name.startswith(o + ".") for o in out):
            continue
        if isinstance(module, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            continue  # its items come next in named_modules() and are kept one by one
        out.append(name)
    return out


def _vision_units(model: torch.nn.Module) -> list[str]:
    """Top-most vision-tower modules that do not contain a projector (Qwen's merger sits inside ``visual``)."""
    projectors = [n for n, _ in model.named_modules() if is_projector(n)]

    def keep(name: str) -> bool:
        return is_vision_tower(name) and not any(p.startswith(name + ".") for p in projectors)

    return _units(model, keep)


def apply_lora(
    model: torch.nn.Module,
    r: int = 128,
    alpha: float = 256,
    dropout: float = 0.05,
    target_modules: str | Sequence[str] | None = None,
    *,
    vision_trainable: bool = False,
    projector_trainable: bool = True,
):
    """Wrap ``model`` in a peft LoRA model; returns the ``PeftModel`` (the base is modified in place).

    ``target_modules``: ``None`` -- every linear layer of the language model (see
    :func:`language_linear_layers`); otherwise anything peft accepts (names, a regex). Targets in
    the vision tower or the projector are refused: the vision tower is trained, if at all, in
    full (``vision_trainable``, as the projector with ``projector_trainable``), as peft
    ``modules_to_save`` whose trained copies are saved with the adapter and are bypassed with the
    adapter disabled.
    """
    from peft import LoraConfig, get_peft_model

    if is_lora(model):
        raise ValueError("the model already has a LoRA adapter")
    all_names = [n for n, _ in model.named_modules()]
    if target_modules is None:
        layers = language_linear_layers(model)
        if not layers:
            raise ValueError(f"found no language-model linear layers in {type(model).__name__}")
        target_modules = _compact_pattern(layers, all_names)
    elif not isinstance(target_modules, str):
        target_modules = list(target_modules)
    modules_to_save: list[str] = []
    if projector_trainable:
        modules_to_save += _units(model, is_projector)
    if vision_trainable:
        modules_to_save += _vision_units(model)
    config = LoraConfig(
        r=int(r),
        lora_alpha=float(alpha),
        lora_dropout=float(dropout),
        target_modules=target_modules,
        modules_to_save=modules_to_save or None,
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    bad = sorted(
        {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_modules() if n.endswith(".lora_A")}
        & {f"base_model.model.{n}" for n in all_names if is_vision_tower(n) or is_projector(n)}
    )
    if bad:
        raise ValueError(
            f"model.lora.target_modules={target_modules!r} puts LoRA on vision-tower / projector layers "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); target language-model layers only "
            "(null: all of them) and use vision_trainable / projector_trainable to train those in full"
        )
    return peft_model


def is_lora(model: Any) -> bool:
    """Whether ``model`` is a peft model with an adapter."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def export_policy(model, path: str | Path, merge: bool, *, processor: Any = None, inplace: bool = False) -> Path:
    """Write the policy so that plain transformers loads it (atomically, with the processor).

    ``merge=True``: the LoRA weights (and the trained projector) are folded into the base
    weights and a plain checkpoint is written -- ``AutoModelForImageTextToText.from_pretrained(path)``.
    The model is merged on a copy unless ``inplace`` (then it is no longer a peft model).
    ``merge=False``: the peft adapter (``adapter_config.json`` + weights, trained projector
    included); transformers loads it with the same call when peft is installed and the base
    checkpoint (``base_model_name_or_path``) is reachable. A model without LoRA is saved as is.
    """
    from perpo.models.loading import atomic_save_pretrained

    if is_lora(model) and merge:
        model = (model if inplace else copy.deepcopy(model)).merge_and_unload()
    return atomic_save_pretrained(model, processor, Path(path))


def apply_lora_config(policy, lora: DictConfig):
    targets = lora.get("target_modules")
    return apply_lora(
        policy, r=int(lora.r), alpha=float(lora.alpha), dropout=float(lora.get("dropout", 0.0)),
        target_modules=OmegaConf.to_container(targets) if OmegaConf.is_config(targets) else targets,
        vision_trainable=bool(lora.get("vision_trainable", False)),
        projector_trainable=bool(lora.get("projector_trainable", True)),
    )  # fmt: skip
