"""Lightning strategies: what perpo adds to them and what it must know about them.

Sharded parameters (FSDP, DeepSpeed ZeRO-3) change one thing for PerPO: every forward of a
sharded block all-gathers its parameters, a collective, so every rank must run the same number
of forwards. Sampling then runs transformers' synchronized generation (``synced_gpus``: a rank
whose answers ended keeps stepping until every rank's have), and a rank whose lists were all
dropped by the spread filter still scores one list, with weight 0 (``perpo.training.module``).

``FSDPStrategy`` is Lightning's, with two defaults a VLM needs:

- each transformer block (and vision block) is its own FSDP unit: the classes the model names in
  ``_no_split_modules``, as accelerate and the HF Trainer wrap them. One unit for the whole model
  would gather every parameter at once, which is no sharding at all;
- it also runs on CPU processes over gloo (``trainer=fsdp_sim``), so the sharded code paths run in
  the CPU test suite: torch's FSDP takes CPU when told ``device_id=cpu``, while Lightning refuses
  FSDP without CUDA (by an exact type check, which this subclass passes). For tests, not speed.
"""

from __future__ import annotations

from typing import Callable

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy


def shards_parameters(strategy) -> bool:
    """Whether each rank holds only a shard of the parameters (gathered in every forward)."""
    if isinstance(strategy, LightningFSDPStrategy):
        return True
    return isinstance(strategy, DeepSpeedStrategy) and bool(getattr(strategy, "zero_stage_3", False))


def block_classes(model: torch.nn.Module) -> set[type]:
    """Module classes named by any ``_no_split_modules`` inside ``model`` (transformers' blocks)."""
    names: set[str] = set()
    for module in model.modules():
        names |= set(getattr(module, "_no_split_modules", None) or ())
    return {type(m) for m in model.modules() if type(m).__name__ in names}


class FSDPStrategy(LightningFSDPStrategy):
    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        if "auto_wrap_policy" not in self.kwargs:
            blocks = block_classes(model)
            if blocks:
                self.kwargs["auto_wrap_policy"] = ModuleWrapPolicy(blocks)
        wrapped = any(isinstance(m, FullyShardedDataParallel) for m in model.modules())
        if self.root_device.type == "cpu" and not wrapped:
            # Lightning would pass device_id=None on CPU, which torch reads as "find an accelerator"
            model = FullyShardedDataParallel(
                module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs,
            )  # fmt: skip
            self.kwargs.pop("auto_wrap_policy", None)  # applied; Lightning would warn it is ignored
        return super()._setup_model(model)

    # torch (2.13) segfaults gathering a full state dict with offload_to_cpu=True when the
    # parameters already live on the CPU, and Lightning always asks for the offload: on CPU the
    # full state dicts are gathered without it (the same tensors, already in host memory).
    def _cpu_full_state(self) -> bool:
        return self.root_device.type == "cpu" and self._state_dict_type == "full"

    def _full_state_context(self):
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.state_dict_type(
            self.model, StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
        )  # fmt: skip

    def lightning_module_state_dict(self):
        if not self._cpu_full_state():
            return super().lightning_module_state_dict()
        with self._full_state_context():
            return self.model.state_dict()

    def optimizer_state(self, optimizer):
        if not self._cpu_full_state():
            return super().optimizer_state(optimizer)
        from lightning.pytorch.core.optimizer import LightningOptimizer
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import OptimStateKeyType

        optimizer = optimizer._optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
        with self._full_state_context():
            state = FSDP.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:  # the standard layout, as Lightning stores it
                state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
            return state


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy on CPU processes (DeepSpeed's CPU accelerator, gloo), for
    ``trainer=deepspeed_zero3_sim``: Lightning refuses it before DeepSpeed is asked."""

    def setup_environment(self) -> None:
        super(DeepSpeedStrategy, self).setup_environment()  # DDPStrategy's; calls setup_distributed

    @property
    def root_device(self) -> torch.device:  # DeepSpeed reads the local rank from the device index
        return torch.device("cpu", self.local_rank)

    def setup_distributed(self) -> None:  # Lightning's, less its check of CUDA device indices
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()


def gather_full_policy(trainer, module, fresh_policy: Callable[[], torch.nn.Module]):
    """The trained policy as one whole model on rank 0, for the after-evaluation and save_pretrained.

    Under FSDP (and ZeRO-3) each rank holds a shard of every weight: the full weights are gathered
    to rank 0 (a collective: every rank calls this) and loaded into ``fresh_policy()``, a fresh
    copy of the base model (same family, same LoRA). Other ranks get None. Otherwise:
    ``module.policy`` itself.
    """
    strategy = trainer.strategy
    if not shards_parameters(strategy):
        return module.policy
    if isinstance(strategy, LightningFSDPStrategy):
        state = strategy.lightning_module_state_dict()  # full on rank 0 (trainer.strategy.state_dict_type: full)
    else:  # DeepSpeed ZeRO-3 (checked on CPU: trainer=deepspeed_zero3_sim)
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()} if trainer.is_global_zero else {}
    if not trainer.is_global_zero:
        return None
    policy = fresh_policy()
    policy.load_state_dict({k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")})
    return policy.eval()
