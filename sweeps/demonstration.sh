#!/usr/bin/env bash
# The issue-16 demonstration in one command (docs/results/DEMONSTRATION_PLAN.md): for each task,
# base / SFT / DPO / PerPO x 5 seeds; PerPO and DPO aligned on blank images; then
# docs/results/demonstration.json (paired bootstrap 95% intervals) and the ablations' tables.
#   bash sweeps/demonstration.sh                                  # TASKS=grounding,existence SEEDS=1,2,3,4,5
#   TASKS=grounding SEEDS=1,2 ABLATIONS=0 bash sweeps/demonstration.sh experiment=binding
# Extra arguments are Hydra overrides given to every run. Runs are sequential: on a small CPU box two
# torch processes at once slow each other down many times over.
set -euo pipefail
cd "$(dirname "$0")/.."
root="outputs/multirun/demonstration-$(date +%Y%m%d-%H%M%S)"
tasks="${TASKS:-grounding,existence}"
seeds="${SEEDS:-1,2,3,4,5}"
commands=()
run() {  # run a command and keep its text for demonstration.json
  commands+=(--command "$*")
  "$@"
}
run python train.py -m --config-dir sweeps --config-name demonstration task="$tasks" seed="$seeds" \
  hydra.sweep.dir="$root/methods" "$@"
run python train.py -m --config-dir sweeps --config-name demonstration task="$tasks" seed="$seeds" \
  loss=perpo,dpo data.blank_image=true hydra.sweep.dir="$root/blank" "$@"
python -m perpo.reporting.intervals "$root/methods" "$root/blank" --out docs/results/demonstration.json "${commands[@]}"
python -m perpo.reporting "$root/methods" "$root/blank" --by data.blank_image --out "$root/report.md"
if [ "${ABLATIONS:-1}" = 1 ]; then
  SEEDS="$seeds" bash sweeps/ablation.sh listsize "$@"   # N = 2, 4, 8, 12, 20: list size
  SEEDS="$seeds" bash sweeps/ablation.sh gamma "$@"      # margin scaling gamma 0, 0.5, 1
fi
echo "demonstration runs in $root; summary in docs/results/demonstration.json"
