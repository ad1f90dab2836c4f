"""Plain-text progress for logs and batch jobs (Lightning's bar only draws on a terminal)."""

from __future__ import annotations

import logging
import time

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

log = logging.getLogger("perpo")


class StepProgressBar(RichProgressBar):
    """Lightning's rich bar, titled without an epoch count when the run is bounded by steps:
    ``max_epochs=-1`` made the stock bar read ``Epoch 3/-2``. Without the logger's version
    number either: the CSV logger's ``v_num`` read ``v_num: 0.000`` beside the loss."""

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        return f"{description:{len(self.validation_description)}}"


class ValHistory(L.Callback):
    """``history``: (optimizer step, value of ``monitor``) after every validation -- the curve that
    shows a warm start reached its plateau."""

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.history: list[tuple[int, float]] = []

    def on_validation_end(self, trainer, pl_module):
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not trainer.sanity_checking:
            self.history.append((int(trainer.global_step), round(float(value), 6)))


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


def draw_boxes(image, target, answers, rewards, box_format, record, box_frame: str = "original"):
    """The image with the true box (green) and each parsed sampled box (red, brighter = higher
    reward), enlarged so that a 64-pixel synthetic image stays readable. Boxes are read back to
    the original image's frame (perpo.boxes.read_box), as the reward reads them."""
    from PIL import ImageDraw

    from perpo.boxes import read_box

    scale = max(1, 256 // max(image.size))
    canvas = image.convert("RGB").resize((image.width * scale, image.height * scale), resample=0)
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size

    def rect(box, colour, width):
        x1, x2 = sorted((box[0] * w, box[2] * w))  # a model may answer a reversed box
        y1, y2 = sorted((box[1] * h, box[3] * h))
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=width)

    for answer, reward in zip(answers, rewards):
        box = read_box(answer, record, box_format, box_frame)
        if box is not None:
            rect(box, (255, int(255 * (1 - reward)), int(255 * (1 - reward))), 1)
    rect(target, (0, 255, 0), 2)
    return canvas


class ListSamples(L.Callback):
    """At every validation and at the end of training: the last step's sampled lists as a W&B
    table (image -- for grounding with the true box and the sampled boxes drawn --, prompt,
    target, each answer with its reward) and the rewards since the last log as a histogram
    (W&B and TensorBoard). Other loggers get the scalars only. Rank 0 only."""

    def __init__(self, max_lists: int = 8):
        self.max_lists = max_lists

    def on_validation_end(self, trainer, pl_module):
        self._log(trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._log(trainer, pl_module)

    def _log(self, trainer, pl_module):
        recent = getattr(pl_module, "recent_lists", None)
        rewards = getattr(pl_module, "reward_history", None)
        if not trainer.is_global_zero or recent is None or trainer.sanity_checking:
            return
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        step = trainer.global_step
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                table = wandb.Table(columns=["id", "image", "prompt", "target", "answers", "rewards", "best", "kept"])
                images = []
                for record, texts, values, kept in recent[: self.max_lists]:
                    image = record["image"]
                    if record.get("task") == "grounding":
                        image = draw_boxes(
                            image, record["target"], texts, values, pl_module.family.box_format, record, pl_module.family.box_frame
                        )
                    images.append(wandb.Image(image, caption=f"{record['id']}: {record.get('prompt', '')} (best {max(values):.2f})"))
                    table.add_data(
                        str(record["id"]), wandb.Image(image), record.get("prompt", ""), str(record["target"]),
                        "\n".join(f"{v:.3f}  {t}" for t, v in zip(texts, values)), [round(v, 4) for v in values],
                        texts[max(range(len(values)), key=values.__getitem__)], bool(kept),
                    )  # fmt: skip
                payload = {"samples/lists": table, "samples/images": images}
                if rewards:
                    payload["train/reward_histogram"] = wandb.Histogram(list(rewards))
                logger.experiment.log(payload, step=step)
            elif isinstance(logger, TensorBoardLogger) and rewards:
                import torch

                logger.experiment.add_histogram("train/rewards", torch.tensor(list(rewards)), global_step=step)
        if rewards is not None:
            rewards.clear()
