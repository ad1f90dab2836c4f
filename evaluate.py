"""perpo: evaluate a model on a split (Hydra; same config groups as train.py).

    python evaluate.py                                     # the embedded default's SFT base, test split
    python evaluate.py eval.checkpoint=outputs/runs/<run>/model task=grounding
    python evaluate.py task=ocr eval.split=val eval.blank_image=true   # the image-unconditional check

Writes eval.json (metrics + config), eval.md (a table) and predictions.jsonl to the run folder.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from perpo.commands.cli import run_guarded

    def job(cfg):
        from perpo.commands.evaluate import evaluate_only

        return evaluate_only(cfg)

    report = run_guarded(cfg, job)
    return next(iter(report["metrics"].values()), None)


if __name__ == "__main__":
    main()
