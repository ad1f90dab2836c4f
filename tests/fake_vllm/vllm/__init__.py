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


class LLM:
    def __init__(self, model: str, dtype: str = "auto", max_model_len: int | None = None, gpu_memory_utilization: float = 0.9, **kwargs):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization={gpu_memory_utilization}")
        self.model = AutoModelForImageTextToText.from_pretrained(model).eval()
        self.processor = AutoProcessor.from_pretrained(model)
        _log({"init": dict(model=model, dtype=dtype, max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization, **kwargs)})

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
