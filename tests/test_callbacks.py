"""perpo.training.callbacks: what the console shows while training."""

import lightning as L
from lightning.pytorch.loggers import CSVLogger

from perpo.training.callbacks import StepProgressBar


def test_progress_bar_shows_metrics_but_not_the_loggers_version(tmp_path):
    """The stock bar adds the logger's ``v_num`` (the CSV logger's 0 read ``v_num: 0.000``
    beside the loss); ours shows the logged metrics only. Fails before the fix: v_num is there."""
    bar = StepProgressBar()
    trainer = L.Trainer(logger=CSVLogger(tmp_path), callbacks=[bar], accelerator="cpu", enable_checkpointing=False)
    trainer._logger_connector._progress_bar_metrics = {"loss": 0.25}
    assert bar.get_metrics(trainer, None) == {"loss": 0.25}
    assert "v_num" in L.pytorch.callbacks.RichProgressBar.get_metrics(bar, trainer, None)
