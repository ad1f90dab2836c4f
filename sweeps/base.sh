#!/usr/bin/env bash
# The demonstration's base (issue 16, docs/results/demonstration.md): the multi-task SFT warm start of
# experiment=multitask_base, trained in two stages (a lower lr for the second) until grounding's val acc@0.5 plateaus, then copied to
# assets/tiny_multitask_base (the checkpoint experiment=demonstration aligns from) and measured on
# every task: metrics, whether it uses the image (answer NLL with true vs shuffled images), and
# grounding's best-of-8 oracle (the room a preference method has above the base).
#   bash sweeps/base.sh                 # about an hour on a 2-core CPU (wall time in docs/results/base.md)
# The warm start is cached (outputs/cache/sft_base), so a second run only re-evaluates.
set -euo pipefail
cd "$(dirname "$0")/.."
out="outputs/base/$(date +%Y%m%d-%H%M%S)"
start=$(date +%s)
checkpoint() { python -c "import json,sys; print(json.load(open(sys.argv[1]))['checkpoint'])" "$1/eval.json"; }
# stage 1: 15,000 steps at lr 2e-3 (experiment=multitask_base); stage 2: on from there at lr 4e-4 until
# val acc@0.5 plateaus (experiment=multitask_base_cooldown); each stage's warmstart.json keeps the one before
# (stage 1 is evaluated beside $out, not in it: the report reads one evaluation per task from $out)
python evaluate.py experiment=multitask_base eval.image_check=false hydra.run.dir="$out.stage1" "$@"
python evaluate.py experiment=multitask_base_cooldown model.path="$(checkpoint "$out.stage1")" eval.best_of_n=true \
  hydra.run.dir="$out/grounding" "$@"
built=$(checkpoint "$out/grounding")
rm -rf assets/.tiny_multitask_base.tmp && mkdir -p assets
cp -r "$built" assets/.tiny_multitask_base.tmp && rm -rf assets/tiny_multitask_base
mv assets/.tiny_multitask_base.tmp assets/tiny_multitask_base   # never half a checkpoint under the real name
for task in counting ocr existence; do
  python evaluate.py task="$task" eval.checkpoint=assets/tiny_multitask_base data.sizes.test=1000 \
    hydra.run.dir="$out/$task" "$@"
done
python -m perpo.reporting.base_report "$out" --seconds $(( $(date +%s) - start )) \
  --command "bash sweeps/base.sh $*" --out docs/results/base.md
