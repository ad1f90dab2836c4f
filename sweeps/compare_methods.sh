#!/usr/bin/env bash
# PerPO vs DPO vs continued SFT from the same cached SFT base, over three seeds (Hydra multirun).
# Each seed has its own SFT base (cached); every method of a seed starts from it.
#   bash sweeps/compare_methods.sh                 # grounding
#   bash sweeps/compare_methods.sh task=ocr        # any extra override is passed on
set -euo pipefail
cd "$(dirname "$0")/.."
dir="outputs/multirun/compare-$(date +%Y%m%d-%H%M%S)"
python train.py -m loss=perpo,dpo,sft seed=1,2,3 save_model=false hydra.sweep.dir="$dir" "$@"
python -m perpo.report "$dir"
