"""perpo: PerPO training entry point (Hydra).

    python train.py reward=iou listsize=8
    python train.py task=ocr loss=dpo seed=1 trainer.max_steps=50
    python train.py -m loss=perpo,dpo seed=1,2,3          # multirun sweep
"""

import logging

import hydra
from omegaconf import DictConfig

log = logging.getLogger("perpo")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from perpo.commands.cli import run_guarded

    def job(cfg):
        from perpo.commands.train import run

        return run(cfg)

    results = run_guarded(cfg, job)
    after = results.get("after") or {}
    return next(iter(after.values()), None)  # first metric: Hydra sweepers can optimize it


if __name__ == "__main__":
    main()
