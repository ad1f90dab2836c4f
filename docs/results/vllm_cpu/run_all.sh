#!/usr/bin/env bash
set -x
cd /work/wt-vllm
export PYTHONPATH=/work/vllm-dl/shim OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind VLLM_ENABLE_V1_MULTIPROCESSING=0
PY=/work/vllm-venv/bin/python
R=/work/vllm-dl/runs; rm -rf $R /work/vllm-dl/tiny; mkdir -p $R
time timeout 600 $PY /work/vllm-dl/probe.py /work/vllm-dl/tiny || exit 1
B="paths.cache_dir=$R/cache warmstart.steps=30 warmstart.batch_size=16 warmstart.lr=5e-3 warmstart.warmup_steps=0 data.sizes.train=96 data.sizes.val=4 data.sizes.test=8 data.batch_size=4 listsize=4 data.min_margin=0.0 eval.batch_size=8 sample.chunk_size=8 sample.batch_size=8"
time timeout 900 $PY sample.py $B sample.out_dir=$R/lists_tf hydra.run.dir=$R/run_tf || exit 2
time timeout 900 $PY sample.py $B sample.out_dir=$R/lists_vllm hydra.run.dir=$R/run_vllm sample.engine=vllm +sample.vllm.enforce_eager=true sample.vllm.max_model_len=512 || exit 3
$PY /work/vllm-dl/compare.py $R/lists_vllm $R/lists_tf
