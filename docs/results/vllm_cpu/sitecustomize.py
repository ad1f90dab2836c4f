# Experiment-only shim (docs/results/vllm_cpu.md): transformers' pixtral image processor hard-imports
# torchvision, which has no working build beside torch 2.13.0+cpu. vLLM's llava.py imports it only
# for _num_image_tokens (pure arithmetic). Provide that one function without torchvision.
import sys, types
m = types.ModuleType("transformers.models.pixtral.image_processing_pixtral")
def _num_image_tokens(image_size, patch_size):
    height, width = image_size
    ph, pw = patch_size if isinstance(patch_size, (tuple, list)) else (patch_size, patch_size)
    return (height - 1) // ph + 1, (width - 1) // pw + 1
m._num_image_tokens = _num_image_tokens
sys.modules[m.__name__] = m
