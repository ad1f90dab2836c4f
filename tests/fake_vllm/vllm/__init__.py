"""A stand-in for vLLM's offline API, for testing perpo's vLLM engine glue on CPU (vLLM has no
CPU build on the package registry). Put ``tests/fake_vllm`` first on PYTHONPATH.

It mirrors the documented surface perpo uses -- ``LLM(model=..., dtype=..., ...)``,
``LLM.get_tokenizer()``, ``LLM.generate(requests, sampling_params, use_tqdm=...)`` with requests
``{"prompt": str, "multi_modal_data": {"image": PIL.Image}}`` and one ``SamplingParams(n,
temperature, top_p, max_tokens, seed, stop_token_ids)`` per request, returning ``RequestOutput``s
whose ``outputs`` are ``CompletionOutput(token_ids, finish_reason, text)`` -- and checks what
vLLM would refuse (a prompt without exactly one image placeholder, a non-PIL image, a
``SamplingParams`` field vLLM does not have). Sampling is transformers' own, seeded per request.
Like vLLM, a completion that stopped at a stop token keeps that token in ``token_ids``; every
other request (odd index) drops it, to exercise both ways perpo may receive them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

def _log(entry: dict) -> None:
    """Append what the engine received to $FAKE_VLLM_LOG (JSON lines), for the tests to inspect."""
    import json
    import os

    if os.environ.get("FAKE_VLLM_LOG"):
        with open(os.environ["FAKE_VLLM_LOG"], "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    allowed_token_ids: list[int] | None = None

    def __post_init__(self):
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"seed {self.seed} out of range")


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str
    outputs: list[CompletionOutput]


def _refuse_unwrapped_tower(model: str) -> None:
    """vLLM 0.32's LLaVA loader (the real one, docs/results/vllm_cpu.md) wants the hub's
    ``vision_tower.vision_model.*`` names and refuses the ``vision_tower.embeddings.*`` that
    transformers 5 saves, with this message."""
    from pathlib import Path

    from safetensors import safe_open

    for file in sorted(Path(model).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
                    head = ".".join(name.split(".")[:2])
                    raise ValueError(
                        f"There is no module or parameter named '{head}' in LlavaForConditionalGeneration. "
                        "The available parameters belonging to vision_tower (CLIPVisionModel) are: {'vision_tower.vision_model...'}"
                    )


class _WeightsLoader:
    """vLLM's ``load_weights`` as the stand-in's transformers model can take it: like vLLM 0.32's
    LLaVA loader it wants the hub's ``vision_tower.vision_model.*`` names (and refuses the bare
    ``vision_tower.*`` that transformers 5 uses in memory), then finds the parameter under the
    in-memory name; unknown names raise."""

    def __init__(self, model):
        self.model = model

    def load_weights(self, weights):
        params = dict(self.model.named_parameters())
        loaded = set()
        with torch.no_grad():
            for name, tensor in weights:
                if "vision_tower." in name and "vision_tower.vision_model." not in name:
                    head = name.split("vision_tower.")[0] + "vision_tower." + name.split("vision_tower.")[1].split(".")[0]
                    raise ValueError(f"There is no module or parameter named '{head}' in LlavaForConditionalGeneration")
                own = name.replace("vision_tower.vision_model.", "vision_tower.")
                if own not in params:
                    own = name  # a model whose tower does have the vision_model level in memory
                if own not in params:
                    raise ValueError(f"There is no module or parameter named '{name}' in the model")
                params[own].copy_(tensor)
                loaded.add(own)
        _log({"load_weights": len(loaded)})
        return loaded


class LLM:
    def __init__(self, model: str, dtype: str = "auto", max_model_len: int | None = None, gpu_memory_utilization: float = 0.9, **kwargs):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization={gpu_memory_utilization}")
        _refuse_unwrapped_tower(model)
        self.model = AutoModelForImageTextToText.from_pretrained(model).eval()
        self.processor = AutoProcessor.from_pretrained(model)
        _log({"init": dict(model=model, dtype=dtype, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization, **kwargs)})

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        """vLLM runs ``method`` on each worker; the one the engine uses is the worker's
        ``reload_weights(weights_iterator=..., is_checkpoint_format=True)``."""
        kwargs = kwargs or {}
        if method != "reload_weights" or not kwargs.get("is_checkpoint_format", True):
            raise NotImplementedError(f"the stand-in runs only reload_weights in checkpoint format, not {method!r}")
        return [_WeightsLoader(self.model).load_weights(kwargs["weights_iterator"])]

    def reset_prefix_cache(self, *args, **kwargs) -> bool:
        _log({"reset_prefix_cache": True})
        return True

    def get_tokenizer(self):
        return self.processor.tokenizer

    @torch.no_grad()
    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True):
        from PIL import Image

        params = sampling_params if isinstance(sampling_params, list) else [sampling_params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError("one SamplingParams per prompt, or one for all")
        _log({"prompts": [r["prompt"] for r in prompts], "params": [dataclasses.asdict(p) for p in params]})
        image_token = self.processor.image_token
        results = []
        for i, (request, p) in enumerate(zip(prompts, params)):
            image = request["multi_modal_data"]["image"]
            if not isinstance(image, Image.Image):
                raise TypeError(f"multi_modal_data image must be a PIL image, got {type(image).__name__}")
            if request["prompt"].count(image_token) != 1:
                raise ValueError(f"prompt must hold one {image_token!r} placeholder: {request['prompt']!r}")
            enc = self.processor(images=[image], text=[request["prompt"]], return_tensors="pt")
            torch.manual_seed(p.seed if p.seed is not None else 0)
            stop = p.stop_token_ids or [self.processor.tokenizer.eos_token_id]
            out = self.model.generate(
                **enc, do_sample=True, temperature=p.temperature, top_p=p.top_p, top_k=0,
                max_new_tokens=p.max_tokens, num_return_sequences=p.n, eos_token_id=stop,
                pad_token_id=self.processor.tokenizer.pad_token_id,
                suppress_tokens=None if p.allowed_token_ids is None else sorted(set(range(len(self.processor.tokenizer))) - set(p.allowed_token_ids)),
            )  # fmt: skip
            completions = []
            for k, row in enumerate(out[:, enc["input_ids"].shape[1] :].tolist()):
                ids = []
                for t in row:
                    ids.append(t)
                    if t in stop:
                        break
                stopped = ids[-1] in stop
                if stopped and i % 2 == 1:
                    ids = ids[:-1]
                completions.append(CompletionOutput(k, self.processor.tokenizer.decode(ids), ids, "stop" if stopped else "length"))
            results.append(RequestOutput(str(i), request["prompt"], completions))
        return results
