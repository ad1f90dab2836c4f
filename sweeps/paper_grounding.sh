#!/usr/bin/env bash
# One model's block of the paper's grounding table: base, + SFT, + DPO, + PerPO, each evaluated on the
# eight RefCOCO / RefCOCO+ / RefCOCOg splits, then the table with the paper's numbers beside ours.
# Needs GPUs, the checkpoints (hub) and the release's scored lists with COCO train2014 images.
#   bash sweeps/paper_grounding.sh llava15 data.path=/data/perpo/refcoco_lists.jsonl data.options.image_dir=/data/coco/train2014
#   SEED=1 bash sweeps/paper_grounding.sh llava_onevision data.path=... trainer=gpu
# The rows train with DeepSpeed ZeRO-3 (as released; pip install 'perpo[deepspeed]'); on one GPU pass
# trainer=gpu, or trainer=fsdp / trainer=ddp on several.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-}"
case "$model" in
  llava15 | llava_next | llava_onevision) shift ;;
  *) echo "usage: bash sweeps/paper_grounding.sh llava15|llava_next|llava_onevision [hydra overrides]" >&2; exit 2 ;;
esac
seed="${SEED:-42}"
bash sweeps/paper_eval_grounding.sh "paper/${model}_grounding_base" "$@"
for method in sft dpo perpo; do
  row="${model}_grounding_${method}"
  run="outputs/paper/$row/seed$seed"
  python train.py experiment="paper/$row" seed="$seed" hydra.run.dir="$run" "$@"
  # the training run evaluated RefCOCO testA already (results.json "after")
  SPLITS="RefCOCO:val RefCOCO:testB RefCOCO+:val RefCOCO+:testA RefCOCO+:testB RefCOCOg:val RefCOCOg:test" \
    bash sweeps/paper_eval_grounding.sh "paper/$row" "$run/model" "$@"
done
python -m perpo.reporting outputs/paper --paper --out outputs/paper/grounding.md
