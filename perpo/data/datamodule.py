"""LightningDataModule over records: batches are plain lists of record dicts.

Online PerPO samples its lists inside the training step, so a training batch is a batch of
prompts (records); with stored lists (``data.lists``) a record also carries its N answers.

The training order is a pure function of (seed, epoch, world size): every epoch is one
seeded permutation cut into *global* batches of ``batch_size * world_size`` records, and rank r
takes the r-th slice of each. So

- one process with batch 2B and two processes with batch B see the same global batches
  (the multi-process parity check), and
- a run resumed from a checkpoint continues at the exact record where it stopped: the loader
  is Lightning-stateful, and its state is the number of batches the fit loop has *processed*
  in the epoch (read from the loop, not from the iterator, which Lightning runs one batch
  ahead), so the resumed loader skips exactly those.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler


def _as_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def epoch_seed(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"order:{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's share of each global batch of a seeded per-epoch permutation.

    ``drop_last``: the tail that does not fill a global batch is dropped (every rank then runs
    the same number of steps: none waits for another at an all-reduce).
    """

    def __init__(self, size: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = True):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        self.skip = 0  # batches to skip at the start of the next iteration (resume)

    def set_epoch(self, epoch: int) -> None:  # Lightning calls this at the start of every epoch
        self.epoch = epoch

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        full, rest = divmod(self.size, self.global_batch)
        return full if self.drop_last or rest == 0 else full + 1

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        skip, self.skip = self.skip, 0
        for b in range(skip, len(self)):
            batch = order[b * self.global_batch : (b + 1) * self.global_batch]
            share = batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            if share:
                yield share


#: Marks a copy of a val record that only keeps a rank in step (never counted by metrics).
PAD = "_pad"


class ValShard(torch.utils.data.Dataset):
    """This rank's share of the validation records: items r, r + W, r + 2W, ... of W ranks.

    Every rank gets ceil(n / W) items, a shorter share ending in copies of a record marked
    ``PAD``: every rank then runs the same number of validation batches (under FSDP / ZeRO-3
    every forward all-gathers, a collective), while the metrics count each record exactly once,
    so their sums over ranks equal one process's on the whole set."""

    def __init__(self, records, rank: int = 0, world_size: int = 1):
        self.records = records
        self.indices = list(range(rank, len(records), world_size))
        self.length = -(-len(records) // world_size)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < len(self.indices):
            return self.records[self.indices[i]]
        return {**self.records[self.indices[0] if self.indices else 0], PAD: True}


class ResumableLoader(DataLoader):
    """A DataLoader whose ``state_dict`` is Lightning's position in the epoch (see module doc)."""

    def __init__(self, *args, position: Callable[[], dict[str, int]], **kwargs):
        super().__init__(*args, **kwargs)
        self._position = position

    def state_dict(self) -> dict[str, int]:
        return self._position()

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: GlobalBatchSampler = self.batch_sampler
        done = int(state.get("batches_done", 0))
        if done >= len(sampler):  # saved on the last batch of an epoch: the next epoch starts fresh
            return
        sampler.set_epoch(int(state.get("epoch", 0)))
        sampler.skip = done


class RecordDataModule(L.LightningDataModule):
    def __init__(
        self, train, val=None, *, batch_size: int = 16, val_batch_size: int = 64, num_workers: int = 0, seed: int = 0,
    ):  # fmt: skip
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.seed = seed

    def _position(self) -> dict[str, int]:
        trainer = self.trainer
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": int(trainer.current_epoch), "batches_done": int(progress.processed)}

    def train_dataloader(self):
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = GlobalBatchSampler(
            len(self.train_set), self.batch_size, seed=self.seed, rank=rank, world_size=world,
            drop_last=len(self.train_set) >= self.batch_size * world,
        )  # fmt: skip
        return ResumableLoader(
            self.train_set, batch_sampler=sampler, collate_fn=_as_list, num_workers=self.num_workers,
            position=self._position,
        )  # fmt: skip

    def val_dataloader(self):
        if self.val_set is None or len(self.val_set) == 0:
            return []
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        shard = ValShard(self.val_set, rank, world)  # each rank scores its own share (see ValShard)
        return DataLoader(shard, batch_size=self.val_batch_size, collate_fn=_as_list, num_workers=self.num_workers)
