#!/usr/bin/env bash
# The paper's ablations as Hydra multiruns (sweeps/ablation_<name>.yaml), then the report.
#   bash sweeps/ablation.sh listsize       # PerPO, DPO at N = 2, 4, 8, 12, 20 (+ SFT once): table + listsize.png
#   bash sweeps/ablation.sh gamma          # PerPO at gamma 0, 0.5, 1: one row per gamma
#   bash sweeps/ablation.sh blank_image    # PerPO, DPO aligned on blank vs real images
#   SEEDS=1 bash sweeps/ablation.sh gamma task=ocr
#   bash sweeps/ablation.sh listsize experiment=demonstration eval.retention=[]   # on the demonstration's base
#   SEEDS=42 bash sweeps/ablation.sh gamma experiment=paper/llava15_grounding_perpo data.path=<lists>   # GPU
# Extra arguments are Hydra overrides. Runs are sequential: on a small CPU box two torch processes
# at once slow each other down many times over. The tiny default needs no GPU and no download.
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:-}"
case "$name" in
  listsize | gamma | blank_image) shift ;;
  *) echo "usage: bash sweeps/ablation.sh listsize|gamma|blank_image [hydra overrides]" >&2; exit 2 ;;
esac
dir="outputs/multirun/ablation-${name//_/-}-$(date +%Y%m%d-%H%M%S)"
seeds=()
if [ -n "${SEEDS:-}" ]; then seeds=("seed=$SEEDS"); fi
python train.py -m --config-dir sweeps --config-name "ablation_$name" hydra.sweep.dir="$dir" ${seeds[@]+"${seeds[@]}"} "$@"
case "$name" in
  listsize)
    # SFT samples no lists: one run per seed, drawn as a flat line
    python train.py -m --config-dir sweeps --config-name ablation_listsize loss=sft listsize=8 \
      hydra.sweep.dir="$dir/sft" ${seeds[@]+"${seeds[@]}"} "$@"
    python -m perpo.reporting "$dir" --figure "$dir/listsize.png" --out "$dir/report.md" ;;
  gamma) python -m perpo.reporting "$dir" --by margin.gamma --out "$dir/report.md" ;;
  blank_image) python -m perpo.reporting "$dir" --by data.blank_image --out "$dir/report.md" ;;
esac
# Paired bootstrap 95% intervals within and across settings (needs eval.predictions=true, which
# experiment=demonstration sets; otherwise the summary names what is missing).
key=$(case "$name" in listsize) echo listsize ;; gamma) echo margin.gamma ;; blank_image) echo data.blank_image ;; esac)
python -m perpo.reporting.intervals "$dir" --by "$key" --out "$dir/intervals.json" --markdown "$dir/intervals.md" \
  --command "bash sweeps/ablation.sh $name $*"
