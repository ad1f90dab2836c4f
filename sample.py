"""perpo: offline discriminative rewarding (Hydra). Samples N answers per prompt with the base
model, scores them, keeps the lists with spread and stores them (resumable: run the same command
again after a crash). Train on them with ``python train.py data.lists=<folder> reference=cached``.

    python sample.py listsize=20                          # -> outputs/lists/grounding-tiny-N20-seed42
    python sample.py task=ocr listsize=5 sample.min_margin=0.04
"""

import logging

import hydra
from omegaconf import DictConfig

log = logging.getLogger("perpo")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from perpo.commands.cli import run_guarded

    def job(cfg):
        from perpo.commands.sample import run_sampling

        return run_sampling(cfg)

    run_guarded(cfg, job)


if __name__ == "__main__":
    main()
