"""LightningDataModule over records: batches are plain lists of record dicts.

Online PerPO samples its lists inside the training step, so a training batch is a batch of
prompts (records). Offline lists (stored scored lists) plug in here as another dataset.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader


def _as_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


class RecordDataModule(L.LightningDataModule):
    def __init__(self, train, val=None, *, batch_size: int = 16, val_batch_size: int = 64, num_workers: int = 0):
        super().__init__()
        self.train_set, self.val_set = train, val
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers

    def train_dataloader(self):
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=len(self.train_set) >= self.batch_size,
            collate_fn=_as_list, num_workers=self.num_workers,
        )  # fmt: skip

    def val_dataloader(self):
        if self.val_set is None or len(self.val_set) == 0:
            return []
        return DataLoader(self.val_set, batch_size=self.val_batch_size, collate_fn=_as_list, num_workers=self.num_workers)
