"""Plain-text progress for logs and batch jobs (Lightning's bar only draws on a terminal)."""

from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger("perpo")


class StepLog(L.Callback):
    """Every ``every`` optimizer steps, one log line: step, s/step, and the progress-bar metrics."""

    def __init__(self, every: int = 10):
        self.every = every
        self._last = None

    def on_train_start(self, trainer, pl_module):
        self._last = (time.time(), trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._last[1] or step % self.every:
            return
        now = time.time()
        rate = (now - self._last[0]) / max(step - self._last[1], 1)
        self._last = (now, step)
        shown = {k: float(v) for k, v in trainer.progress_bar_metrics.items()}
        values = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
        log.info("step %d/%s %.2fs/step %s", step, trainer.max_steps, rate, values)
