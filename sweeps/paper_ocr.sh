#!/usr/bin/env bash
# One block of the paper's dense-OCR table: LLaVA-NeXT (Qwen2 + SigLIP) tuned on 25k or 50k pages,
# base, + SFT, + DPO, + PerPO, each evaluated on the test pages (a training run evaluates its test
# split itself: results.json "after"), then the table with the paper's numbers beside ours.
# Needs GPUs, the authors' OCR checkpoint in transformers format and page data (neither is on the hub).
#   bash sweeps/paper_ocr.sh ocr25k model.path=/ckpt/llava-next-ocr25k data.path=/data/pages
# The rows train with DeepSpeed ZeRO-3 (as released; pip install 'perpo[deepspeed]'); on one GPU pass
# trainer=gpu, or trainer=fsdp / trainer=ddp on several.
set -euo pipefail
cd "$(dirname "$0")/.."
variant="${1:-}"
case "$variant" in
  ocr25k | ocr50k) shift ;;
  *) echo "usage: bash sweeps/paper_ocr.sh ocr25k|ocr50k [hydra overrides]" >&2; exit 2 ;;
esac
seed="${SEED:-42}"
python evaluate.py experiment="paper/llava_next_${variant}_base" hydra.run.dir="outputs/paper/llava_next_${variant}_base/eval/test" "$@"
for method in sft dpo perpo; do
  row="llava_next_${variant}_${method}"
  python train.py experiment="paper/$row" seed="$seed" hydra.run.dir="outputs/paper/$row/seed$seed" "$@"
done
python -m perpo.reporting outputs/paper --paper --out outputs/paper/ocr.md
