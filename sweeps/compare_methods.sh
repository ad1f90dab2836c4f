#!/usr/bin/env bash
# PerPO vs DPO vs continued SFT from the same cached SFT base, over seeds (Hydra multirun).
# Each seed has its own SFT base (cached); every method of that seed starts from it.
#   bash sweeps/compare_methods.sh                              # grounding, seeds 1-3
#   SEEDS=1 LOSSES=perpo,dpo bash sweeps/compare_methods.sh task=ocr
# Extra arguments are Hydra overrides. Runs are sequential: on a small CPU box two torch
# processes at once slow each other down many times over.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="outputs/multirun/compare-$(date +%Y%m%d-%H%M%S)"
python train.py -m loss="${LOSSES:-perpo,dpo,sft}" seed="${SEEDS:-1,2,3}" save_model=false hydra.sweep.dir="$dir" "$@"
python -m perpo.reporting "$dir"
