#!/usr/bin/env bash
# The issue-16 demonstration in one command (docs/results/demonstration.md): base / SFT / DPO / PerPO
# aligned on binding grounding from the committed multi-task base (assets/tiny_multitask_base, built by
# sweeps/base.sh), every other task measured before and after; PerPO and DPO also aligned on blank
# images; then docs/results/demonstration.{json,md} (paired bootstrap 95% intervals) and the README's
# generated results section.
#   bash sweeps/demonstration.sh                          # SEEDS=1,2,3,4,5 BLANK_SEEDS=1,2,3
#   SEEDS=1,2 BLANK_SEEDS=1 bash sweeps/demonstration.sh trainer.max_steps=60
# Extra arguments are Hydra overrides given to every run. Runs are sequential: on a small CPU box two
# torch processes at once slow each other down many times over.
set -euo pipefail
cd "$(dirname "$0")/.."
root="outputs/multirun/demonstration-$(date +%Y%m%d-%H%M%S)"
seeds="${SEEDS:-1,2,3,4,5}"
blank_seeds="${BLANK_SEEDS:-1,2,3}"
commands=()
run() {  # run a command and keep its text for demonstration.json
  commands+=(--command "$*")
  "$@"
}
run python train.py -m --config-dir sweeps --config-name demonstration seed="$seeds" \
  hydra.sweep.dir="$root/methods" "$@"
if [ -n "$blank_seeds" ]; then
  run python train.py -m --config-dir sweeps --config-name demonstration seed="$blank_seeds" \
    loss=perpo,dpo data.blank_image=true hydra.sweep.dir="$root/blank" "$@"
fi
folders=("$root/methods")
if [ -d "$root/blank" ]; then folders+=("$root/blank"); fi
python -m perpo.reporting.intervals "${folders[@]}" --out docs/results/demonstration.json \
  --markdown docs/results/demonstration.md --readme README.md "${commands[@]}"
# why it does or does not separate: the base's error kinds and each method's training signals
python -m perpo.reporting.grounding_errors "${folders[@]}" --out docs/results/grounding_errors.md
python -m perpo.reporting.training_signals "${folders[@]}" --out docs/results/training_signals.md
echo "demonstration runs in $root; summary in docs/results/demonstration.{json,md}, grounding_errors.md, training_signals.md and README.md"
