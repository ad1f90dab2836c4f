"""perpo: evaluate a model on a split (Hydra; same config groups as train.py).

    python evaluate.py                                     # the embedded default's SFT base, test split
    python evaluate.py eval.checkpoint=outputs/runs/<run>/model task=grounding
    python evaluate.py task=ocr eval.split=val eval.blank_image=true   # the image-unconditional check

Writes eval.json (metrics + config), eval.md (a table) and predictions.jsonl to the run folder.
"""

import sys

import hydra
from omegaconf import DictConfig

from perpo.config import ConfigError, validate


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        validate(cfg)
    except ConfigError as err:
        print(f"perpo: {err}", file=sys.stderr)
        sys.exit(2)
    from perpo.models.loading import ModelLoadError
    from perpo.pipeline import evaluate_only

    try:
        report = evaluate_only(cfg)
    except ModelLoadError as err:
        print(f"perpo: {err}", file=sys.stderr)
        sys.exit(2)
    return next(iter(report["metrics"].values()), None)


if __name__ == "__main__":
    main()
