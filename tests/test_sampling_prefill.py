"""``generate(prefill="shared")``: N samples per prompt from ONE prefill of the image and prompt.

The shared path must be the expand path (transformers' ``num_return_sequences=N``, which runs
the image tower and the prompt N times) up to float rounding: same greedy tokens and per-step
logits, on the tiny LLaVA and on every family; the same samples for the same seed (both paths
make the same RNG calls: one ``multinomial`` over the B*N rows per step); a first-token
distribution that is the model's; banned tokens never emitted, answers trimmed at EOS; and one
vision pass over the B images and one language-model pass over the B prompts. (transformers 5
already runs the vision tower once per image on the expand path -- it encodes the images before
repeating them, ``mm_encoder_outputs`` -- but it still prefills each prompt N times.)
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from perpo.prompting import ChatFamily
from perpo.models.families import FAMILIES
from perpo.sampling.generation import (
    SHARED_PREFILL_UNSUPPORTED,
    banned_token_ids,
    generate,
    uses_shared_prefill,
)

NAMES = sorted(FAMILIES)


# -- helpers -----------------------------------------------------------------------------------


def _prompts(family, task, records):
    return [family.prompt_text(r, task) for r in records], [r["image"] for r in records]


def _submodule(model, names) -> torch.nn.Module:
    inner = model.model
    for name in names:
        if isinstance(getattr(inner, name, None), torch.nn.Module):
            return getattr(inner, name)
    raise AssertionError(f"none of {names} in {type(model).__name__}")


@contextmanager
def _input_shapes(module):
    """Shapes of the first tensor argument of every forward of ``module``."""
    seen: list[tuple[int, ...]] = []

    def hook(module, args, kwargs):
        main = ("inputs_embeds", "input_ids", "pixel_values", "hidden_states")
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        tensors += [kwargs[k] for k in main if isinstance(kwargs.get(k), torch.Tensor)]
        seen.append(tuple(tensors[0].shape))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def _vision_rows(model):
    """Rows (images, or patches for Qwen-VL) entering the vision tower, one entry per pass."""
    return _input_shapes(_submodule(model, ("vision_tower", "visual", "vision_model")))


def _lm_shapes(model):
    """(rows, tokens) of every language-model forward."""
    return _input_shapes(_submodule(model, ("language_model", "text_model")))


@contextmanager
def _step_logits(model):
    """Last-position logits of every forward (one entry per generation step, float64)."""
    steps: list[torch.Tensor] = []

    def hook(module, inputs, output):
        steps.append(output[:, -1, :].double().clone())

    handle = model.get_output_embeddings().register_forward_hook(hook)
    try:
        yield steps
    finally:
        handle.remove()


def _greedy_both_ways(model, processor, texts, images, n: int, max_new: int = 5):
    """(expand tokens, shared tokens, expand step logits, shared step logits) for greedy."""
    with _step_logits(model) as expand_steps:
        expand = generate(model, processor, texts, images, num_return_sequences=n, do_sample=False,
                          max_new_tokens=max_new, prefill="expand")  # fmt: skip
    with _step_logits(model) as shared_steps:
        shared = generate(model, processor, texts, images, num_return_sequences=n, do_sample=False,
                          max_new_tokens=max_new, prefill="shared")  # fmt: skip
    shared_steps = shared_steps[1:]  # the first forward is the shared prefill of the B prompts
    if n > 1:  # expand greedy runs the B rows once and repeats them (transformers refuses N > 1)
        expand_steps = [s.repeat_interleave(n, dim=0) for s in expand_steps]
    return expand, shared, expand_steps, shared_steps


def _check_greedy(model, processor, texts, images):
    for n in (1, 3):
        expand, shared, expand_steps, shared_steps = _greedy_both_ways(model, processor, texts, images, n)
        assert shared == expand, n
        assert all(len(row) == n and all(ids == row[0] for ids in row) for row in shared)
        # Not only the argmax: each step's logits are the same numbers (a wrong position id or a
        # cache row mixed up between prompts moves them far more than this).
        assert len(shared_steps) == len(expand_steps) >= 1
        for a, b in zip(shared_steps, expand_steps):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def _check_prefill_once(model, processor, texts, images, n: int) -> int:
    """Shared: one vision pass over the B images and one LM pass over the B prompts; the B*N
    rows only run the last prompt token and the new ones. Returns the vision rows."""
    b = len(texts)
    runs = {}
    for mode, k in (("shared", n), ("expand", n), ("expand", 1)):
        with _vision_rows(model) as vision, _lm_shapes(model) as lm:
            generate(model, processor, texts, images, num_return_sequences=k, max_new_tokens=3, prefill=mode)
        runs[mode, k] = ([v[0] for v in vision], [x[:2] for x in lm])
    (vision, lm), (vision_expand, lm_expand), (vision_one, _) = runs["shared", n], runs["expand", n], runs["expand", 1]
    assert len(vision) == 1 and vision == vision_one  # the images of the B prompts, once
    # transformers >= 5 also encodes images once before expanding (mm_encoder_outputs); older: N times
    assert vision_expand in ([vision[0]], [n * vision[0]])
    prompt_len = lm_expand[0][1]
    assert lm_expand[0] == (b * n, prompt_len)  # expand: the B*N prompts, in full
    assert lm[0] == (b, prompt_len - 1)  # shared: the B prompts once, all but the last token
    assert all(shape == (b * n, 1) for shape in lm[1:]) and len(lm) == len(lm_expand) + 1
    return vision[0]


# -- the tiny LLaVA ----------------------------------------------------------------------------


def test_shared_is_the_default_and_used_for_llava(tiny, processor, family, task, grounding_records):
    model, _ = tiny
    texts, images = _prompts(family, task, grounding_records[:2])
    ids = processor(images=[[i] for i in images], text=texts, return_tensors="pt", padding=True)["input_ids"]
    assert (ids == processor.tokenizer.pad_token_id).any()  # the prompts are padded: positions matter
    assert uses_shared_prefill(model, ids) and uses_shared_prefill(model, ids, "shared")
    assert not uses_shared_prefill(model, ids, "expand")
    # a prompt ending with an image placeholder would lose its image: expand then
    image_id = model.config.image_token_id
    assert not uses_shared_prefill(model, torch.cat([ids, torch.full((2, 1), image_id)], 1))
    with pytest.raises(ValueError, match="prefill"):
        generate(model, processor, texts, images, max_new_tokens=1, prefill="once")


def test_greedy_same_tokens_and_logits_as_expand(tiny, processor, family, task, grounding_records):
    model, _ = tiny
    texts, images = _prompts(family, task, grounding_records[:3])
    _check_greedy(model, processor, texts, images)


def test_vision_tower_and_prompt_run_once_per_prompt(tiny, processor, family, task, grounding_records):
    model, _ = tiny
    texts, images = _prompts(family, task, grounding_records[:2])
    assert _check_prefill_once(model, processor, texts, images, n=5) == 2  # B images, not B*N


def test_same_samples_as_expand_for_a_seed(tiny, processor, family, task, grounding_records):
    """Both paths sample through the same transformers loop, one multinomial over the B*N rows
    per step, from logits equal up to rounding: the same seed gives the same samples."""
    model, _ = tiny
    texts, images = _prompts(family, task, grounding_records[:2])
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9)):
        out = {}
        for mode in ("expand", "shared"):
            torch.manual_seed(11)
            out[mode] = generate(model, processor, texts, images, num_return_sequences=64, temperature=temperature,
                                 top_p=top_p, max_new_tokens=3, prefill=mode)  # fmt: skip
        assert out["shared"] == out["expand"], (temperature, top_p)
        firsts = {ids[0] for row in out["shared"] for ids in row}
        assert len(firsts) > 5  # really sampled, not one greedy answer


def test_first_token_distribution_is_the_models(tiny, processor, family, task, grounding_records):
    """Empirical first-token distribution of the shared path vs the exact softmax of an
    unpadded one-prompt forward (banned ids removed). Threshold: the 99.9th percentile of the
    total variation distance of the same number of exact multinomial draws (simulated), so a
    correct sampler fails with probability ~1e-3 per prompt -- and the seed is fixed."""
    model, _ = tiny
    texts, images = _prompts(family, task, grounding_records[:2])
    n = 256
    torch.manual_seed(5)
    out = generate(model, processor, texts, images, num_return_sequences=n, max_new_tokens=1, prefill="shared")
    banned = banned_token_ids(processor, model)
    vocab = model.config.text_config.vocab_size
    g = torch.Generator().manual_seed(0)
    for b, (text, image) in enumerate(zip(texts, images)):
        enc = processor(images=[[image]], text=[text], return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0, -1].double()
        logits[banned] = float("-inf")
        p = torch.softmax(logits, -1)
        counts = torch.bincount(torch.tensor([ids[0] for ids in out[b]]), minlength=vocab).double()
        tvd = 0.5 * (counts / n - p).abs().sum().item()
        null = torch.multinomial(p.float().expand(2000, -1), n, replacement=True, generator=g)
        null_counts = torch.zeros(2000, vocab, dtype=torch.float64).scatter_add_(1, null, torch.ones_like(null, dtype=torch.float64))
        null_tvd = 0.5 * (null_counts / n - p).abs().sum(1)
        threshold = torch.quantile(null_tvd, 0.999).item()
        assert tvd < threshold, (b, tvd, threshold)
        assert not {ids[0] for ids in out[b]} & set(banned)


def test_banned_tokens_and_eos_in_shared_mode(fresh_model, processor, family, task, grounding_records):
    """Banned ids boosted far above everything never appear; EOS boosted a little ends answers
    early, and they are trimmed there exactly as on the expand path."""
    model = fresh_model
    banned = banned_token_ids(processor, model)
    eos = processor.tokenizer.eos_token_id

    def boost(module, inputs, output):
        output = output.clone()
        output[..., banned] += 1e4
        output[..., eos] += 3.0
        return output

    model.lm_head.register_forward_hook(boost)
    texts, images = _prompts(family, task, grounding_records[:2])
    max_new = 8
    out = {}
    for mode in ("expand", "shared"):
        torch.manual_seed(3)
        out[mode] = generate(model, processor, texts, images, num_return_sequences=6, max_new_tokens=max_new, prefill=mode)
    assert out["shared"] == out["expand"]
    answers = [ids for row in out["shared"] for ids in row]
    assert len(answers) == 12
    for ids in answers:
        assert ids and not set(banned) & set(ids)
        assert ids[-1] == eos or len(ids) == max_new
        assert eos not in ids[:-1]
    assert any(ids[-1] == eos and len(ids) < max_new for ids in answers)  # EOS really hit early
    torch.manual_seed(0)
    greedy = generate(model, processor, texts, images, num_return_sequences=2, do_sample=False, max_new_tokens=5)
    assert all(not set(banned) & set(ids) for row in greedy for ids in row)


def test_unsupported_family_falls_back_to_expand(tiny, processor, family, task, grounding_records, monkeypatch):
    model, _ = tiny
    texts, images = _prompts(family, task, grounding_records[:2])
    torch.manual_seed(1)
    shared = generate(model, processor, texts, images, num_return_sequences=3, max_new_tokens=3)
    monkeypatch.setitem(SHARED_PREFILL_UNSUPPORTED, model.config.model_type, "test")
    with _lm_shapes(model) as lm:
        torch.manual_seed(1)
        fallback = generate(model, processor, texts, images, num_return_sequences=3, max_new_tokens=3)
    assert lm[0][0] == 6 and fallback == shared  # the 2 prompts prefilled 3 times each


# -- every family ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    """family -> (model in eval mode, processor), saved and loaded back with load_model."""
    from perpo.models.loading import load_model
    from perpo.testing.tiny_families import save_tiny_family

    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            try:
                path = save_tiny_family(name, Path(tmp_path_factory.mktemp(name)) / "model")
            except ImportError as err:  # e.g. SmolVLM's processor needs num2words
                pytest.skip(f"{name}: the processor cannot be built offline here: {err}")
            model, processor = load_model(path, eos_token=FAMILIES[name].eos_token)
            cache[name] = (model.eval(), processor)
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_family_shared_prefill_matches_expand(name, family_models, task, grounding_records):
    model, processor = family_models(name)
    texts, images = _prompts(ChatFamily(processor, FAMILIES[name].box_format), task, grounding_records[:3])
    ids = processor(images=[[i] for i in images], text=texts, return_tensors="pt", padding=True)["input_ids"]
    if not uses_shared_prefill(model, ids):
        assert model.config.model_type in SHARED_PREFILL_UNSUPPORTED
        pytest.skip(f"{name}: shared prefill not used ({SHARED_PREFILL_UNSUPPORTED[model.config.model_type]})")
    _check_greedy(model, processor, texts, images)
    _check_prefill_once(model, processor, texts[:2], images[:2], n=4)
    samples = {}
    for mode in ("expand", "shared"):
        torch.manual_seed(2)
        samples[mode] = generate(model, processor, texts, images, num_return_sequences=8, max_new_tokens=4, prefill=mode)
    assert samples["shared"] == samples["expand"]
    banned = set(banned_token_ids(processor, model))
    assert not banned & {t for row in samples["shared"] for ids in row for t in ids}


# -- per-record seeds (SeededSampler: Gumbel-max with one RNG per row) ----------------------------


def test_record_seeded_samples_do_not_depend_on_the_batch(tiny, processor, family, task, grounding_records):
    """A record's N answers depend on its seed only: alone or beside others, shared or expanded
    prefill, whatever the global RNG -- what makes multi-process runs and resumes exact."""
    from perpo.sampling.generation import record_seed

    model, _ = tiny
    texts, images = _prompts(family, task, grounding_records[:3])
    seeds = [record_seed(1, 5, r["id"]) for r in grounding_records[:3]]
    torch.manual_seed(0)
    together = generate(model, processor, texts, images, num_return_sequences=4, max_new_tokens=6, row_seeds=seeds)
    torch.manual_seed(99)
    alone = generate(model, processor, texts[2:], images[2:], num_return_sequences=4, max_new_tokens=6, row_seeds=seeds[2:])
    expand = generate(
        model, processor, texts, images, num_return_sequences=4, max_new_tokens=6, row_seeds=seeds, prefill="expand"
    )
    assert together[2:] == alone and together == expand
    other_step = [record_seed(1, 6, r["id"]) for r in grounding_records[:3]]
    assert generate(model, processor, texts, images, num_return_sequences=4, max_new_tokens=6, row_seeds=other_step) != together
    assert record_seed(1, 5, "a") == record_seed(1, 5, "a") != record_seed(1, 5, "b")


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.8)])
def test_record_seeded_first_token_distribution_is_the_models(tiny, processor, family, task, grounding_records, temperature, top_p):
    """Gumbel-max draws follow softmax(logits / T) restricted to the top-p nucleus: total variation
    below the 99.9th percentile of exact multinomial draws of the same size (as above), and no
    token outside the nucleus is ever drawn."""
    from transformers import TopPLogitsWarper

    model, _ = tiny
    texts, images = _prompts(family, task, grounding_records[:1])
    n = 256
    out = generate(
        model, processor, texts, images, num_return_sequences=n, max_new_tokens=1, temperature=temperature,
        top_p=top_p, row_seeds=[12345],
    )  # fmt: skip
    banned = banned_token_ids(processor, model)
    vocab = model.config.text_config.vocab_size
    enc = processor(images=[[images[0]]], text=[texts[0]], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0, -1].double()
    logits[banned] = float("-inf")
    logits = logits / temperature
    if top_p < 1:
        logits = TopPLogitsWarper(top_p)(None, logits[None].float())[0].double()
    p = torch.softmax(logits, -1)
    drawn = torch.tensor([ids[0] for ids in out[0]])
    assert (p[drawn] > 0).all()  # nothing outside the nucleus, nothing banned
    counts = torch.bincount(drawn, minlength=vocab).double()
    tvd = 0.5 * (counts / n - p).abs().sum().item()
    g = torch.Generator().manual_seed(0)
    null = torch.multinomial(p.float().expand(2000, -1), n, replacement=True, generator=g)
    null_counts = torch.zeros(2000, vocab, dtype=torch.float64).scatter_add_(1, null, torch.ones_like(null, dtype=torch.float64))
    threshold = torch.quantile(0.5 * (null_counts / n - p).abs().sum(1), 0.999).item()
    assert tvd < threshold, (tvd, threshold)
