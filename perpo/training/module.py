"""The LightningModule: one training step is the whole PerPO flow, in order.

    records -> sample N answers (policy, no grad) -> rewards -> drop lists without spread
            -> list batch -> log-probs (policy with grad, reference without) -> loss

With stored lists (``sample.py``, ``data.lists=<dir>``) a batch row already holds its N answers
and rewards: the first two stages are read instead of computed, the rest is the same.

``loss="sft"`` replaces the first four stages with the ground-truth answer (the warm start
and the SFT baseline use this same module).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Callable, Mapping, Sequence

import lightning as L
import torch

from perpo.config import ALL_LOSSES
from perpo.data.datamodule import PAD
from perpo.evaluation.loop import greedy_answers
from perpo.evaluation.metrics import TaskMetrics
from perpo.listbatch.logps import answer_logps
from perpo.listbatch.naive import encode_prefixes, ground_truth_batch
from perpo.listbatch.packed import batch_logps, build_batch, resolve_layout
from perpo.losses import degenerate_lists, list_loss
from perpo.models.parts import freeze_vision_tower, param_groups
from perpo.prompting import ChatFamily, TaskSpec
from perpo.rewards.scored_lists import decode_and_score, keep_mask, read_stored_lists
from perpo.sampling.generation import generate, record_seed
from perpo.sampling.vllm_engine import policy_weights
from perpo.training.checkpointing import check_same_model, rng_states, set_rng_states
from perpo.training.config import ListConfig, OptimConfig
from perpo.training.reference import disable_dropout, make_reference
from perpo.training.strategies import shards_parameters

log = logging.getLogger(__name__)


class TrainingCollapsed(RuntimeError):
    """Every list was dropped for many steps in a row: there is nothing left to learn from."""


class PerPOModule(L.LightningModule):
    def __init__(
        self,
        policy: torch.nn.Module,
        processor: Any,
        family: ChatFamily,
        task: TaskSpec,
        reward_fn: Callable[[str, Mapping], float | None] | None,
        *,
        loss: str = "perpo",
        beta: float = 0.1,
        gamma: float | None = 0.5,
        margin: str = "power",
        lists: ListConfig | None = None,
        optim: OptimConfig | None = None,
        reference: str = "copy",
        length_normalize: bool = False,
        scoring: str = "auto",
        stored_lists: bool = False,
        sft_tasks: Mapping[str, TaskSpec] | None = None,
        engine: Any = None,
    ):
        super().__init__()
        if loss not in ALL_LOSSES:
            raise ValueError(f"loss={loss!r} is not known; choose one of {ALL_LOSSES}")
        if loss != "sft" and reward_fn is None and not stored_lists:
            raise ValueError(f"loss={loss} samples and scores lists: it needs a reward function")
        self.policy = policy
        disable_dropout(self.policy)
        self.processor = processor
        self.family = family
        self.task = task
        # loss=sft on records of several tasks (a multi-task warm start): each record's own spec
        self.sft_tasks = dict(sft_tasks) if sft_tasks else None
        self.reward_fn = reward_fn
        self.loss_name = loss
        self.lists = lists or ListConfig()
        self.optim = optim or OptimConfig()
        self.length_normalize = length_normalize
        self.stored_lists = stored_lists
        # online lists from vLLM (sampling.engine=vllm, perpo.sampling.vllm_engine.VLLMEngine): it
        # holds its own copy of the weights, synced from the policy before each step's sampling
        self.engine = engine
        self._engine_step = 0  # the optimizer step whose weights the engine holds (0: the base it loaded)
        if self.optim.vision_lr == 0:  # frozen before any strategy wraps the model (DDP registers grads then)
            freeze_vision_tower(self.policy)
        # shared: one pass over each list's image + prompt (perpo.listbatch.packed); naive: N copies
        self.scoring = resolve_layout(scoring, policy, processor) if loss != "sft" else "naive"
        self.list_loss = None if loss == "sft" else list_loss(loss, beta=beta, gamma=gamma, margin=margin)
        # The reference is only needed by preference losses; SFT never builds one.
        self.reference = None if loss == "sft" else make_reference(reference, policy)
        self.val_metrics = TaskMetrics(task.name, box_format=family.box_format_name, box_frame=family.box_frame)
        self._empty_steps = 0
        self._nothing_kept = False  # this step's global batch kept no list (set by training_step)
        self.recent_lists: list | None = None
        self.reward_history: deque[float] = deque(maxlen=20_000)  # since the last histogram
        self.counters = {"lists_seen": 0, "lists_kept": 0, "answers": 0, "unparsed": 0, "degenerate": 0}

    # ----- the training step, top to bottom ---------------------------------------------
    def training_step(self, records: Sequence[Mapping[str, Any]], batch_idx: int):
        if self.loss_name == "sft":
            return self._sft_step(records)
        prompts = [self.family.prompt_text(r, self.task) for r in records]
        images = [r["image"] for r in records]
        prefixes = encode_prefixes(self.processor, prompts, images)

        # 1. discriminative rewarding: N samples per prompt, scored by the task metric
        if self.stored_lists:  # offline: sampled and scored by sample.py
            answers, scored = read_stored_lists(records, self.processor.tokenizer)
        else:
            answers = self._sample(prompts, images, records)
            scored = decode_and_score(self.reward_fn, records, answers, self.processor)
        keep = keep_mask(scored, self.lists.min_margin)
        self._log_lists(scored, keep)
        # for the samples table and reward histogram (perpo.training.callbacks.ListSamples)
        self.recent_lists = list(zip(records, scored.texts, scored.rewards.tolist(), keep.tolist()))
        self.reward_history.extend(scored.rewards.flatten().tolist())
        kept = keep.nonzero().squeeze(1).tolist()
        kept_all = int(self._sum_over_ranks(torch.tensor([float(len(kept))], device=self.device))[0])  # global batch
        self._nothing_kept = kept_all == 0
        if kept_all == 0:  # the same decision on every rank
            self._count_empty_step()
            if not self._distributed:
                return None  # Lightning skips backward and the optimizer step
        else:
            self._empty_steps = 0
        # Multi-process: every rank runs the same forwards and backward (DDP all-reduces gradients
        # in backward; FSDP / ZeRO-3 gather parameters in every forward). A rank that kept no list
        # scores one with weight 0. Each rank's loss is its lists' sum * world / kept_all: the
        # ranks' mean (what DDP and FSDP average) is then the mean over the global batch's kept
        # lists, as in one process, however the kept lists fall across ranks.
        world = self.trainer.world_size if self._distributed else 1
        weight = world / kept_all if kept and kept_all else 0.0
        kept = kept or [0]

        # 2. listwise preference optimization on the kept lists
        batch = build_batch(
            prefixes, [answers[i] for i in kept], self._pad_id, select=kept, layout=self.scoring
        ).to(self.device)
        policy_lp = batch_logps(self.policy, batch)
        ref_lp = self.reference.logps(batch, [records[i] for i in kept])
        pick = (lambda lp: lp.mean) if self.length_normalize else (lambda lp: lp.sum)
        if weight == 0.0:  # no list on this rank: gradients of zero through the same forwards
            loss = (pick(policy_lp) * 0.0).sum()
            sums = torch.zeros(4, device=self.device)
        else:
            rewards = scored.rewards[kept].to(self.device)
            per_list = self.list_loss(pick(policy_lp), pick(ref_lp), rewards)
            loss = per_list.sum() * weight
            margin = pick(policy_lp) - pick(ref_lp)  # implicit reward s_k
            best, worst = rewards.argmax(1, keepdim=True), rewards.argmin(1, keepdim=True)
            gap = margin.gather(1, best) - margin.gather(1, worst)
            sums = torch.stack([per_list.sum(), gap.sum(), (gap > 0).float().sum(), margin.mean(1).sum()]).detach()
        if kept_all:  # sums over this rank's lists, summed over ranks / kept_all: global-batch means
            means = self._sum_over_ranks(sums) / kept_all
            names = ("train/loss", "train/score_gap_best_worst", "train/pair_accuracy", "train/policy_minus_ref")
            self.log_dict(dict(zip(names, means)), batch_size=kept_all)
            self.log("loss", means[0], prog_bar=True, logger=False, batch_size=kept_all)
        return loss

    def _sample(self, prompts, images, records) -> list[list[list[int]]]:
        """N answers per prompt from the current policy: transformers' generate on the policy
        itself, or vLLM once its weights are the policy's of this step."""
        s = self.lists.sampling
        # each record's answers from its own seed: the same in any batch, rank or resumed run
        seeds = [record_seed(s.seed, self.global_step, str(r["id"])) for r in records]
        options = dict(num_return_sequences=self.lists.listsize, temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens)
        if self.engine is None:
            # sharded parameters: ranks step together until all are done
            return generate(self.policy, self.processor, prompts, images, row_seeds=seeds, synced_gpus=self._shards_parameters, **options)
        if self._engine_step != self.global_step:  # an optimizer step since the last sync (or a resume)
            self.engine.load_weights(policy_weights(self.policy))
            self._engine_step = self.global_step
        return self.engine.generate(prompts, images, row_seeds=seeds, **options)

    def _sft_step(self, records):
        batch = ground_truth_batch(self.processor, self.family, self.sft_tasks or self.task, records).to(self.device)
        lp = answer_logps(self.policy, batch)
        loss = -lp.sum.sum() / lp.num_tokens.sum()  # mean NLL per answer token
        self.log("train/loss", loss, prog_bar=True, batch_size=len(records))
        return loss

    def _log_lists(self, scored, keep):
        n_lists, n = scored.rewards.shape
        degenerate = degenerate_lists(scored.rewards)
        c = self.counters
        c["lists_seen"] += n_lists
        c["lists_kept"] += int(keep.sum())
        c["answers"] += n_lists * n
        c["unparsed"] += int((~scored.parsed).sum())
        c["degenerate"] += int(degenerate.sum())
        self.log_dict(
            {
                "train/reward_mean": scored.rewards.mean(),
                "train/reward_best": scored.rewards.max(1).values.mean(),  # the best-of-N oracle of this step
                "train/reward_worst": scored.rewards.min(1).values.mean(),
                "train/reward_spread": scored.spread.mean(),
                "train/kept_fraction": keep.float().mean(),
                "train/unparsed_fraction": (~scored.parsed).float().mean(),
            },
            batch_size=n_lists, sync_dist=self._distributed,
        )
        self.log("reward", scored.rewards.mean(), prog_bar=True, logger=False, batch_size=n_lists)

    def _count_empty_step(self) -> None:
        """Every list of the global batch dropped: warn, and stop once it lasts (collapse)."""
        self._empty_steps += 1
        if self._empty_steps >= self.lists.max_empty_steps:
            c = self.counters
            raise TrainingCollapsed(
                f"every list was dropped by the spread filter (min_margin={self.lists.min_margin}) "
                f"for {self._empty_steps} steps in a row; {c['unparsed']} of {c['answers']} sampled "
                "answers so far did not parse. The policy has likely collapsed: lower the learning "
                "rate (optim.lr) or beta, or lower data.min_margin."
            )
        log.warning("step %d: no list kept (%d in a row); skipping the update", self.global_step, self._empty_steps)

    @property
    def _distributed(self) -> bool:
        trainer = getattr(self, "_trainer", None)
        return bool(trainer is not None and trainer.world_size > 1)

    @property
    def _shards_parameters(self) -> bool:
        """FSDP / ZeRO-3 over several ranks: generation must keep every rank stepping."""
        trainer = getattr(self, "_trainer", None)
        return bool(self._distributed and shards_parameters(trainer.strategy))

    def _sum_over_ranks(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over ranks (every rank must call it); itself in one process."""
        if not self._distributed:
            return values
        return self.trainer.strategy.reduce(values.to(self.device), reduce_op="sum")

    def _summed_counters(self) -> dict[str, int]:
        """List counters summed over ranks (each rank counts its own lists); all ranks must call it."""
        if not self._distributed:
            return dict(self.counters)
        keys = list(self.counters)
        local = torch.tensor([float(self.counters[k]) for k in keys], dtype=torch.float64, device=self.device)
        total = self.trainer.strategy.reduce(local, reduce_op="sum")
        return {k: int(v) for k, v in zip(keys, total.tolist())}

    def on_train_end(self):
        self.counters = self._summed_counters()

    # ----- checkpoints: exact resume ----------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Drop the frozen reference (rebuilt from the base on resume; it never changes) and keep
        the RNG states: the next step's samples then equal those of an uninterrupted run."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("reference.")}
        # counters over all ranks (every rank dumps the checkpoint; rank 0 writes it)
        checkpoint["perpo"] = {"rng": rng_states(), "counters": self._summed_counters(), "empty_steps": self._empty_steps}

    def setup(self, stage: str) -> None:
        if shards_parameters(self.trainer.strategy):
            # FSDP loads the checkpoint into the wrapped model before on_load_checkpoint could add
            # the reference's weights back: let it leave the reference as built (the base)
            self.strict_loading = False

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if not self._shards_parameters:  # FSDP / ZeRO-3 have loaded their shards already
            check_same_model(checkpoint.get("state_dict") or {}, self.state_dict())
        if self.strict_loading:  # the reference as built (the base), so the checkpoint loads strictly
            state = self.state_dict()
            checkpoint["state_dict"].update({k: v for k, v in state.items() if k.startswith("reference.")})
        saved = checkpoint.get("perpo") or {}
        if self.global_rank == 0:  # the saved counters are the sum over ranks: one rank carries them on
            self.counters.update(saved.get("counters", {}))
        self._empty_steps = saved.get("empty_steps", 0)
        # Restored at the first batch, not now: building the loaders in between draws random numbers.
        self._rng_to_restore = saved.get("rng")

    def on_train_batch_start(self, batch, batch_idx):
        rng = getattr(self, "_rng_to_restore", None)
        if rng is not None:
            set_rng_states(rng)
            self._rng_to_restore = None

    # ----- validation: greedy decoding scored by the task's torchmetrics -----------------
    def validation_step(self, records, batch_idx):
        answers = greedy_answers(
            self.policy, self.processor, self.family, self.task, records, synced_gpus=self._shards_parameters
        )  # fmt: skip
        counted = [i for i, r in enumerate(records) if not r.get(PAD)]  # padding only keeps ranks in step
        self.val_metrics.update([answers[i] for i in counted], [records[i] for i in counted])

    def on_validation_epoch_end(self):
        values = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log_dict({f"val/{k}": v for k, v in values.items()}, prog_bar=True)

    # ----- optimization -----------------------------------------------------------------
    def on_before_optimizer_step(self, optimizer):
        # Every list of the global batch dropped (multi-process: the zero-weight step ran on every
        # rank): no update. Gradients None, not zero, else AdamW's moments would still move the
        # weights -- as in one process, where training_step returned None.
        if self._nothing_kept:
            optimizer.zero_grad(set_to_none=True)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """FSDP: the norm over every rank's shards is FSDP's own ``clip_grad_norm_`` (Lightning
        clips only by value under FSDP); elsewhere Lightning's clipping."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = self.trainer.strategy.model
        if gradient_clip_val and isinstance(wrapped, FullyShardedDataParallel) and gradient_clip_algorithm in (None, "norm"):
            wrapped.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        from transformers import get_scheduler

        o = self.optim
        groups = param_groups(self.policy, lr=o.lr, projector_lr=o.projector_lr, vision_lr=o.vision_lr)
        optimizer = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
        # the schedule's length: max_steps, or the steps of max_epochs over this rank's batches
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = get_scheduler(o.scheduler, optimizer, num_warmup_steps=o.warmup_steps, num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @property
    def _pad_id(self) -> int:
        return self.processor.tokenizer.pad_token_id
