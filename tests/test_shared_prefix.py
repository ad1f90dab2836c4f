"""Shared-prefix scoring (perpo.listbatch.packed) equals the naive N-copies layout exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from perpo.listbatch.naive import Prefixes, build_list_batch, encode_prefixes

from perpo.prompting import answer_ids
from perpo.losses import perpo_loss
from perpo.listbatch.logps import answer_logps
from perpo.listbatch.packed import (
    PackedBatch,
    check_shared_support,
    pack_lists,
    packed_answer_logps,
    score_lists,
)

PAD = 0


@pytest.fixture(scope="module")
def tiny_llava():
    from perpo.models.tiny import build_model, build_processor

    return build_model(build_processor().tokenizer, seed=0).eval()


def llava(base, attn: str, strategy: str = "default"):
    model = copy.deepcopy(base)
    model.set_attn_implementation(attn)
    model.config.vision_feature_select_strategy = strategy
    return model


def random_lists(model, prefix_texts=(3, 9, 5), answer_lengths=((1, 10, 4), (7, 2, 2)), seed=0):
    """Prefixes = BOS + image placeholders + random text of the given lengths; random answers."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.get_text_config().vocab_size
    image = getattr(model.config, "image_token_id", None)
    num_image = 0
    if image is not None:
        vision = model.config.vision_config
        num_image = (vision.image_size // vision.patch_size) ** 2
        num_image += model.config.vision_feature_select_strategy == "full"  # CLS kept
    ids = [[1] + [image] * num_image + torch.randint(5, vocab, (k,), generator=g).tolist() for k in prefix_texts]
    vision = {}
    if image is not None:
        size = model.config.vision_config.image_size
        vision["pixel_values"] = torch.randn(len(ids), 3, size, size, generator=g)
    answers = [[torch.randint(5, vocab, (n,), generator=g).tolist() for n in lst] for lst in answer_lengths]
    return Prefixes(ids, vision), answers


def both(model, prefixes, answers, select):
    naive = answer_logps(model, build_list_batch(prefixes, answers, PAD, select=select))
    shared = packed_answer_logps(model, pack_lists(prefixes, answers, PAD, select=select))
    return naive, shared


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logps_and_grads_match_naive(tiny_llava, attn):
    model = llava(tiny_llava, attn)
    prefixes, answers = random_lists(model)
    select = [2, 0]  # a subset of the records, out of order
    naive, shared = both(model, prefixes, answers, select)
    torch.testing.assert_close(shared.sum, naive.sum, atol=1e-5, rtol=0)
    assert torch.equal(shared.num_tokens, naive.num_tokens)
    assert shared.num_tokens.tolist() == [[1, 10, 4], [7, 2, 2]]

    rewards = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.7, 0.3]])
    grads = []
    for lp in (naive, shared):
        model.zero_grad()
        loss = perpo_loss(lp.sum, torch.zeros_like(lp.sum), rewards, beta=0.1, gamma=1.0).sum() + lp.mean.sum()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 20
    assert any(".vision_tower." in n for n in grads[0])  # gradients reach the shared image too
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-4, rtol=0, msg=name)


def test_float64_is_exact_to_rounding(tiny_llava):
    model = llava(tiny_llava, "sdpa").double()
    prefixes, answers = random_lists(model, seed=3)
    prefixes.vision["pixel_values"] = prefixes.vision["pixel_values"].double()
    naive, shared = both(model, prefixes, answers, [1, 2])
    # The model runs in float64; only token_logps' fp32 log-softmax and sum round: ~2 ulp.
    torch.testing.assert_close(shared.sum, naive.sum, atol=0, rtol=1e-6)


@pytest.mark.parametrize("strategy", ["default", "full"])
def test_vision_tower_runs_once_per_list(tiny_llava, strategy):
    model = llava(tiny_llava, "sdpa", strategy)
    prefixes, answers = random_lists(model, prefix_texts=(4, 6), answer_lengths=((2, 3, 1, 5),) * 2)
    images_seen = []

    def hook(module, args, kwargs):
        pixels = args[0] if args else kwargs["pixel_values"]
        images_seen.append(pixels.shape[0])

    handle = model.model.vision_tower.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        naive, shared = both(model, prefixes, answers, None)
    finally:
        handle.remove()
    assert images_seen == [2 * 4, 2]  # naive: one image per answer; shared: one per list
    torch.testing.assert_close(shared.sum, naive.sum, atol=1e-5, rtol=0)


def test_real_processor_prefixes(tiny, family, task, grounding_records):
    model, processor = tiny
    records = grounding_records[:3]
    prompts = [family.prompt_text(r, task) for r in records]
    prefixes = encode_prefixes(processor, prompts, [r["image"] for r in records])
    texts = [["[0.1, 0.2, 0.3, 0.4]", "no", "[0.5,0.5,0.9,0.9]"], ["1", "[0.0, 0.0, 1.0, 1.0]", "box"]]
    answers = [answer_ids(processor.tokenizer, t) for t in texts]
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():
        naive = score_lists(model, prefixes, answers, pad, select=[1, 2], layout="naive")
        shared = score_lists(model, prefixes, answers, pad, select=[1, 2], layout="shared")
    torch.testing.assert_close(shared.sum, naive.sum, atol=1e-5, rtol=0)
    assert torch.equal(shared.num_tokens, naive.num_tokens)


def test_plain_text_causal_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    prefixes, answers = random_lists(model, prefix_texts=(6, 1, 12), answer_lengths=((3, 1), (8, 2), (2, 2)))
    naive, shared = both(model, prefixes, answers, [1, 0, 2])
    torch.testing.assert_close(shared.sum, naive.sum, atol=1e-5, rtol=0)


def test_packed_layout():
    prefixes = Prefixes([[1, 7, 8], [1, 9]], {"pixel_values": torch.arange(2.0)[:, None]})
    packed = pack_lists(prefixes, [[[20, 21], [30]], [[40], [50, 51, 52, 53]]], PAD)
    assert packed.input_ids.tolist() == [[1, 7, 8, 20, 21, 30, 0], [1, 9, 40, 50, 51, 52, 53]]
    assert packed.position_ids[0].tolist()[:6] == [0, 1, 2, 3, 4, 3]
    assert packed.position_ids[1].tolist() == [0, 1, 2, 2, 3, 4, 5]
    allowed = packed.allowed[0].int()
    assert allowed[5].tolist() == [1, 1, 1, 0, 0, 1, 0]  # answer 2 sees the prefix and itself
    assert allowed[4].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert allowed[:, 6].sum() == 1  # nobody but the pad itself sees the pad
    assert packed.source[0, :, :2].tolist() == [[2, 3], [2, 0]]  # first token from the prefix's last
    assert packed.label_mask[1].tolist() == [[True, False, False, False], [True] * 4]
    assert packed.vision["pixel_values"].tolist() == [[0.0], [1.0]]  # one image per list
    mask = packed.model_inputs(torch.float32)["attention_mask"]
    assert mask.shape == (2, 1, 7, 7) and mask[0, 0, 5, 3] == torch.finfo(torch.float32).min
    assert isinstance(packed.to("cpu"), PackedBatch)


def test_errors(tiny_llava):
    prefixes = Prefixes([[1, 2], [1, 3]], {})
    with pytest.raises(ValueError, match="empty answer"):
        pack_lists(prefixes, [[[5], []], [[5], [6]]], PAD)
    with pytest.raises(ValueError, match="same size"):
        pack_lists(prefixes, [[[5], [6]], [[5]]], PAD)
    with pytest.raises(ValueError, match="layout"):
        score_lists(tiny_llava, prefixes, [[[5]], [[6]]], PAD, layout="packed")
    model = llava(tiny_llava, "eager")
    model.config.text_config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="4D mask"):
        check_shared_support(model)
