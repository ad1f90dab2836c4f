"""perpo: PerPO training entry point (Hydra).

    python train.py reward=iou listsize=8
    python train.py task=ocr loss=dpo seed=1 trainer.max_steps=50
    python train.py -m loss=perpo,dpo seed=1,2,3          # multirun sweep
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

from perpo.config import ConfigError, validate

log = logging.getLogger("perpo")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        validate(cfg)
    except ConfigError as err:
        print(f"perpo: {err}", file=sys.stderr)
        sys.exit(2)
    from perpo.models.loading import ModelLoadError
    from perpo.pipeline import run  # heavy imports only after the config is known to be valid

    try:
        results = run(cfg)
    except ModelLoadError as err:
        print(f"perpo: {err}", file=sys.stderr)
        sys.exit(2)
    after = results.get("after") or {}
    return next(iter(after.values()), None)  # first metric: Hydra sweepers can optimize it


if __name__ == "__main__":
    main()
