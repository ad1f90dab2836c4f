"""Generation engines for offline rewarding (``sample.engine``): who draws the N answers.

``transformers`` (default): :func:`perpo.sampling.generate` on the loaded model -- CPU and GPU,
one prefill per prompt, per-record seeds. ``vllm`` (optional extra, GPUs): vLLM's offline
``LLM.generate`` with the image as multi-modal input and one seed per request, the usual choice
at scale. Both return token ids per prompt and sample, ending with EOS when the answer ended.

The vLLM engine is written against vLLM's documented offline API (``LLM``, ``SamplingParams``
with ``n`` and ``seed``, ``{"prompt", "multi_modal_data": {"image": PIL}}`` inputs) and is NOT
exercised by the test suite: vLLM has no CPU build on the package registry this project is
developed against. ``perpo.config`` refuses ``sample.engine=vllm`` at start-up when it is not
installed.
"""

from __future__ import annotations

from typing import Any, Sequence


class VLLMEngine:
    def __init__(self, path: str, *, dtype: str = "bfloat16", max_model_len: int | None = None, **kwargs: Any):
        from vllm import LLM

        self.llm = LLM(model=str(path), dtype=dtype, max_model_len=max_model_len, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()

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
            SamplingParams(n=num_return_sequences, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed % 2**31)
            for seed in row_seeds
        ]
        eos = self.tokenizer.eos_token_id
        out = []
        for result in self.llm.generate(requests, params, use_tqdm=False):
            row = []
            for completion in result.outputs:
                ids = list(completion.token_ids)
                if completion.finish_reason == "stop" and (not ids or ids[-1] != eos):
                    ids.append(eos)  # scored like every other answer: text + EOS
                row.append(ids or [eos])
            out.append(row)
        return out
