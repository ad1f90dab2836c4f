"""Records -> lists: N sampled answers per prompt from the current policy.

One ``generate`` call per batch of prompts with ``num_return_sequences=N``: transformers
prefills each prompt once and expands its cache N ways. Tokens that must never be emitted as
answer text (image placeholder, pad, BOS, unknown) are suppressed: a sampled ``<image>``
token would break the LLaVA forward pass when the answer is scored.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32


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
) -> list[list[list[int]]]:
    """Completion token ids, ``out[b][k]`` for prompt b and sample k (greedy if not do_sample)."""
    tok = processor.tokenizer
    # One image per prompt, nested: Gemma 3 / SmolVLM read a flat list as all images of one prompt.
    enc = processor(images=[[image] for image in images], text=list(prompt_texts), return_tensors="pt", padding=True)
    if tok.padding_side != "left":
        raise ValueError("sampling needs a left-padding tokenizer (tokenizer.padding_side='left')")
    device = next(model.parameters()).device
    enc = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_return_sequences,
        suppress_tokens=banned_token_ids(processor, model),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    if do_sample:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with eval_mode(model):
        out = model.generate(**enc, **kwargs)
    new = out[:, enc["input_ids"].shape[1] :].tolist()
    flat = [trim_at_eos(ids, tok.eos_token_id, tok.pad_token_id) for ids in new]
    # An empty completion (EOS never reached and nothing kept) still needs one token to score.
    flat = [ids if ids else [tok.eos_token_id] for ids in flat]
    n = num_return_sequences
    return [flat[b * n : (b + 1) * n] for b in range(len(prompt_texts))]


def decode(processor: Any, ids: Sequence[int]) -> str:
    return processor.tokenizer.decode(ids, skip_special_tokens=True).strip()
