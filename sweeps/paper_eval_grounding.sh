#!/usr/bin/env bash
# Evaluate one grounding row of the paper on its eight splits with evaluate.py (one run folder per
# split): RefCOCO val/testA/testB, RefCOCO+ val/testA/testB, RefCOCOg val/test, the lmms-lab parquet
# copies on the hub (lmms-lab/RefCOCO, lmms-lab/RefCOCOplus, lmms-lab/RefCOCOg). Needs a GPU.
#   bash sweeps/paper_eval_grounding.sh paper/llava15_grounding_base                        # the released checkpoint
#   bash sweeps/paper_eval_grounding.sh paper/llava15_grounding_perpo <run folder>/model data.path=<lists> data.options.image_dir=<images>
#   SPLITS="RefCOCOg:val RefCOCOg:test" bash sweeps/paper_eval_grounding.sh paper/llava15_grounding_base
# Extra arguments are Hydra overrides. A trained row's train split (the release's lists) is still
# read (2 rows), so pass the data overrides it trained with. Results: <run folder>/eval/<dataset>-<split>/eval.json
# (base rows: outputs/paper/<row>/eval/...); python -m perpo.reporting outputs/paper --paper.
set -euo pipefail
cd "$(dirname "$0")/.."
experiment="${1:-}"
if [ -z "$experiment" ]; then
  echo "usage: bash sweeps/paper_eval_grounding.sh paper/<row> [<checkpoint folder>] [hydra overrides]" >&2
  exit 2
fi
shift
checkpoint=""
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then checkpoint="$1"; shift; fi
if [ -n "$checkpoint" ]; then
  out="$(dirname "$checkpoint")/eval"
  ckpt=("eval.checkpoint=$checkpoint")
else
  out="outputs/paper/${experiment#paper/}/eval"
  ckpt=()
fi
for pair in ${SPLITS:-RefCOCO:val RefCOCO:testA RefCOCO:testB RefCOCO+:val RefCOCO+:testA RefCOCO+:testB RefCOCOg:val RefCOCOg:test}; do
  dataset="${pair%%:*}" split="${pair#*:}"
  case "$dataset" in
    RefCOCO) hub=lmms-lab/RefCOCO ;;
    RefCOCO+) hub=lmms-lab/RefCOCOplus ;;
    RefCOCOg) hub=lmms-lab/RefCOCOg ;;
    *) echo "unknown dataset $dataset in SPLITS (RefCOCO, RefCOCO+, RefCOCOg)" >&2; exit 2 ;;
  esac
  python evaluate.py experiment="$experiment" ${ckpt[@]+"${ckpt[@]}"} \
    data.splits.test.path="$hub" data.splits.test.split="$split" data.sizes.train=2 data.sizes.val=2 \
    hydra.run.dir="$out/${hub#lmms-lab/}-$split" "$@"
done
