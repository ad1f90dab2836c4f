"""The model path end to end on the embedded tiny LLaVA: build/load, tokenizer, list batches,
exact answer log-probs, gradients, sampling, scored lists, the frozen reference, families.

Everything runs on the ~0.8M-parameter tiny model on CPU; the shared model (``tiny``) is never
mutated -- tests that train or patch a model use ``fresh_model`` (a deep copy).
"""

from __future__ import annotations

import copy
import random
import re
import string
from pathlib import Path

import pytest
import torch

from perpo.listbatch.naive import ListBatch, Prefixes, build_list_batch, encode_prefixes

from perpo.prompting import answer_ids
from perpo.prompting import ChatFamily, TaskSpec
from perpo.rewards.scored_lists import ScoredLists, keep_mask, score_lists
from perpo.training.reference import FrozenCopyReference, make_reference
from perpo.sampling.generation import banned_token_ids, decode, generate, trim_at_eos
from perpo.listbatch.logps import AnswerLogps, answer_logps

ROOT = Path(__file__).resolve().parents[1]
TASK_CONFIGS = sorted((ROOT / "conf" / "task").glob("*.yaml"))


# -- helpers -----------------------------------------------------------------------------------


def _ids(processor, text: str) -> list[int]:
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def prefixes(processor, family, task, grounding_records) -> Prefixes:
    """Prefixes of the first three grounding records."""
    recs = grounding_records[:3]
    return encode_prefixes(processor, [family.prompt_text(r, task) for r in recs], [r["image"] for r in recs])


@pytest.fixture(scope="module")
def list_answers(processor, family, task, grounding_records) -> list[list[list[int]]]:
    """2 lists x 3 answers of different lengths (ground truth, another box, a short word)."""
    out = []
    for rec in grounding_records[:2]:
        texts = [family.answer_text(rec, task), "[0.1, 0.2, 0.3, 0.4] ok", "no"]
        out.append(answer_ids(processor.tokenizer, texts))
    return out


@pytest.fixture(scope="module")
def list_batch(prefixes, list_answers, processor) -> ListBatch:
    return build_list_batch(prefixes, list_answers, processor.tokenizer.pad_token_id)


def _single_row_logp(model, prefix: list[int], answer: list[int], pixel_values: torch.Tensor) -> float:
    """Hand-computed log p(answer | prefix, image): one unpadded forward, float64 log-softmax."""
    ids = torch.tensor([prefix + answer])
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixel_values[None], use_cache=False).logits[0]
    logp = torch.log_softmax(logits.double(), dim=-1)
    total = 0.0
    for j, token in enumerate(answer):
        pos = len(prefix) + j  # position of this answer token; predicted by position pos - 1
        total += logp[pos - 1, token].item()
    return total


# -- 1. the tiny model on disk -----------------------------------------------------------------


def test_tiny_model_is_a_real_llava_saved_and_loaded(tiny_dir, tiny):
    from transformers import (
        AutoModelForImageTextToText,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    model, processor = tiny
    for name in ("config.json", "tokenizer.json", "processor_config.json", "model.safetensors"):
        assert (Path(tiny_dir) / name).is_file(), name
    assert type(model) is LlavaForConditionalGeneration
    assert isinstance(model.config, LlavaConfig)
    # The auto class that load_model goes through maps this config to the LLaVA class.
    assert MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(model.config)] is LlavaForConditionalGeneration
    assert hasattr(AutoModelForImageTextToText, "from_pretrained")
    assert isinstance(processor, LlavaProcessor)
    assert model.config.vision_config.model_type == "clip_vision_model"
    assert model.config.text_config.model_type == "llama"

    n_params = sum(p.numel() for p in model.parameters())
    assert 500_000 <= n_params <= 2_000_000, n_params

    tok = processor.tokenizer
    assert model.config.text_config.vocab_size == len(tok)
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<image>")
    assert tok.padding_side == "left"
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_ensure_tiny_is_idempotent(tiny_dir):
    from perpo.models.loading import ensure_tiny

    weights = Path(tiny_dir) / "model.safetensors"
    before = {p.name: p.stat().st_mtime_ns for p in Path(tiny_dir).iterdir()}
    assert ensure_tiny(tiny_dir) == Path(tiny_dir)
    after = {p.name: p.stat().st_mtime_ns for p in Path(tiny_dir).iterdir()}
    assert after == before
    assert weights.stat().st_mtime_ns == before["model.safetensors"]
    # No temporary sibling folder left behind by the first (atomic) write.
    assert not [p for p in Path(tiny_dir).parent.iterdir() if p.name.startswith(f".{Path(tiny_dir).name}.")]


def test_load_model_rejects_unknown_dtype(tiny_dir):
    from perpo.models.loading import load_model

    with pytest.raises(ValueError, match="float64"):
        load_model(tiny_dir, dtype="float64")


# -- 2. tokenizer ------------------------------------------------------------------------------


def test_task_instructions_fixed_phrases_are_one_token(processor):
    from omegaconf import OmegaConf

    tok = processor.tokenizer
    assert {p.stem for p in TASK_CONFIGS} >= {"grounding", "ocr", "counting", "existence"}
    # The existence probe came later: its phrases are characters, so that the embedded default's
    # vocabulary and weights (and every figure measured with them) stay as they were.
    for path in [p for p in TASK_CONFIGS if p.stem != "existence"]:
        instruction = OmegaConf.load(path).task.instruction
        text = instruction.format(prompt="x")
        ids = _ids(processor, text)
        phrases = [part.strip() for part in instruction.split("{prompt}") if part.strip()]
        assert phrases, path
        for phrase in phrases:
            phrase_id = tok.convert_tokens_to_ids(phrase)
            assert phrase_id != tok.unk_token_id, (path.name, phrase)
            assert ids.count(phrase_id) == 1, (path.name, phrase)
        # every other character is one token: chars - phrase chars + one token per phrase
        assert len(ids) == len(text) - sum(len(p) for p in phrases) + len(phrases), (path.name, ids)
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text

    grounding = OmegaConf.load(ROOT / "conf/task/grounding.yaml").task.instruction.format(prompt="x")
    assert len(_ids(processor, grounding)) == 3  # phrase, " ", "x"
    assert len(grounding) == 83  # ~28x fewer tokens than characters


def test_tokenizer_round_trips_text(processor):
    tok = processor.tokenizer
    box = "[0.12, 0.34, 0.56, 0.78]"
    ids = _ids(processor, box)
    assert len(ids) == len(box)  # character level
    assert tok.decode(ids) == box

    rng = random.Random(0)
    for _ in range(20):
        s = "".join(rng.choice(string.ascii_lowercase + " ") for _ in range(rng.randint(1, 40)))
        assert tok.decode(_ids(processor, s)) == s
    # punctuation spacing is kept verbatim (no tokenization-space clean-up)
    for s in ["a , b . c", "x n't y", "  two  spaces ", "line\nbreak"]:
        assert tok.decode(_ids(processor, s)) == s


def test_prompt_has_one_image_token_per_patch(tiny, family, task, grounding_records):
    model, processor = tiny
    rec = grounding_records[0]
    enc = processor(images=[rec["image"]], text=[family.prompt_text(rec, task)], return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    vc = model.config.vision_config
    assert (vc.image_size // vc.patch_size) ** 2 == 64
    assert int((enc["input_ids"][0] == image_id).sum()) == (64 // 8) ** 2 == 64
    assert tuple(enc["pixel_values"].shape) == (1, 3, 64, 64)


# -- 3. batching -------------------------------------------------------------------------------


def test_build_list_batch_layout(list_batch, prefixes, list_answers, processor):
    pad = processor.tokenizer.pad_token_id
    lengths = [[len(a) for a in lst] for lst in list_answers]
    assert all(len(set(ls)) == 3 for ls in lengths)  # answers of different lengths
    rows = [prefixes.ids[b] + a for b in range(2) for a in list_answers[b]]
    width = max(len(r) for r in rows)

    b = list_batch
    assert (b.num_lists, b.list_size) == (2, 3)
    assert tuple(b.input_ids.shape) == tuple(b.attention_mask.shape) == tuple(b.answer_mask.shape) == (6, width)
    assert b.answer_mask.dtype == torch.bool
    assert b.answer_mask.sum(-1).tolist() == [n for ls in lengths for n in ls]
    for i, row in enumerate(rows):
        prefix_len = len(prefixes.ids[i // 3])
        assert b.input_ids[i, : len(row)].tolist() == row
        assert (b.input_ids[i, len(row) :] == pad).all()  # right padding
        assert b.attention_mask[i].tolist() == [1] * len(row) + [0] * (width - len(row))
        assert b.answer_mask[i].nonzero().flatten().tolist() == list(range(prefix_len, len(row)))
    # ground-truth answers end with EOS, as sampled ones do
    assert all(a[-1] == processor.tokenizer.eos_token_id for lst in list_answers for a in lst)

    pv = b.vision["pixel_values"]
    assert tuple(pv.shape) == (6, 3, 64, 64)
    for i in range(6):
        assert torch.equal(pv[i], prefixes.vision["pixel_values"][i // 3])
    assert not torch.equal(pv[0], pv[3])  # two different images
    inputs = b.model_inputs()
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values"}


def test_build_list_batch_select(prefixes, processor):
    pad = processor.tokenizer.pad_token_id
    answers = [[[10, 11], [12]], [[13, 14, 15], [16]]]
    batch = build_list_batch(prefixes, answers, pad, select=[2, 0])
    assert (batch.num_lists, batch.list_size) == (2, 2)
    expected = [prefixes.ids[2] + [10, 11], prefixes.ids[2] + [12], prefixes.ids[0] + [13, 14, 15], prefixes.ids[0] + [16]]
    for i, row in enumerate(expected):
        assert batch.input_ids[i, : len(row)].tolist() == row
    pv = batch.vision["pixel_values"]
    for i, rec in enumerate([2, 2, 0, 0]):
        assert torch.equal(pv[i], prefixes.vision["pixel_values"][rec])


def test_build_list_batch_rejects_bad_lists(prefixes, processor):
    pad = processor.tokenizer.pad_token_id
    with pytest.raises(ValueError, match="list 1"):
        build_list_batch(prefixes, [[[5], [6]], [[7], []]], pad)
    with pytest.raises(ValueError, match="same size"):
        build_list_batch(prefixes, [[[5], [6]], [[7]]], pad)


# -- 4. scoring --------------------------------------------------------------------------------


def test_answer_logps_equal_hand_computed_unpadded_forward(tiny, list_batch, prefixes, list_answers):
    model, _ = tiny
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    with torch.no_grad():
        out = answer_logps(model, list_batch)
    assert isinstance(out, AnswerLogps)
    assert tuple(out.sum.shape) == tuple(out.num_tokens.shape) == (2, 3)
    assert out.num_tokens.tolist() == [[len(a) for a in lst] for lst in list_answers]
    assert (out.sum < 0).all()

    expected = torch.zeros(2, 3, dtype=torch.float64)
    for b in range(2):
        for k, ans in enumerate(list_answers[b]):
            expected[b, k] = _single_row_logp(model, prefixes.ids[b], ans, prefixes.vision["pixel_values"][b])
    torch.testing.assert_close(out.sum.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.mean, out.sum / out.num_tokens)



def test_answer_logps_same_under_eager_attention(tiny_dir, tiny, list_batch):
    """conf/model/tiny.yaml loads with attn_implementation=eager; scores must not depend on it."""
    from perpo.models.loading import load_model

    eager, _ = load_model(tiny_dir, attn_implementation="eager")
    eager.eval()
    with torch.no_grad():
        a = answer_logps(tiny[0], list_batch)
        b = answer_logps(eager, list_batch)
    torch.testing.assert_close(a.sum, b.sum, rtol=1e-5, atol=1e-5)
    assert torch.equal(a.num_tokens, b.num_tokens)

def test_token_logps_matches_log_softmax():
    from perpo.listbatch.logps import token_logps

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 7, (2, 5), generator=g)
    expected = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    torch.testing.assert_close(token_logps(logits, labels).double(), expected, rtol=1e-5, atol=1e-6)
    # computed in fp32 even for half-precision logits
    assert token_logps(logits.bfloat16(), labels).dtype == torch.float32


# -- 5. gradients ------------------------------------------------------------------------------


def test_gradients_reach_language_model_and_projector(fresh_model, list_batch):
    model = fresh_model
    model.train()
    answer_logps(model, list_batch).sum.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    projector = {n: g for n, g in grads.items() if "multi_modal_projector" in n}
    language = {n: g for n, g in grads.items() if "language_model" in n}
    assert len(projector) == 4 and language
    for name, g in projector.items():
        assert g is not None and g.abs().sum() > 0, name
    # every decoder layer of the language model gets a gradient
    for layer in range(model.config.text_config.num_hidden_layers):
        layer_grads = [g for n, g in language.items() if f"layers.{layer}." in n]
        assert layer_grads and all(g is not None for g in layer_grads), layer
        assert sum(float(g.abs().sum()) for g in layer_grads) > 0, layer
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    vision = [g for n, g in grads.items() if "vision_tower" in n and g is not None]
    assert vision and sum(float(g.abs().sum()) for g in vision) > 0


# -- 6. sampling -------------------------------------------------------------------------------


def _prompts(family, task, records):
    return [family.prompt_text(r, task) for r in records], [r["image"] for r in records]


def test_banned_token_ids(processor):
    tok = processor.tokenizer
    expected = sorted(
        {tok.convert_tokens_to_ids("<image>"), tok.pad_token_id, tok.bos_token_id, tok.unk_token_id}
    )
    assert banned_token_ids(processor) == expected == [0, 1, 3, 4]
    assert tok.eos_token_id not in banned_token_ids(processor)


def test_sample_shapes_banned_tokens_seed_and_train_mode(fresh_model, processor, family, task, grounding_records):
    model = fresh_model
    texts, images = _prompts(family, task, grounding_records[:2])
    banned = set(banned_token_ids(processor))
    eos = processor.tokenizer.eos_token_id
    max_new = 8

    model.train()
    torch.manual_seed(123)
    first = generate(model, processor, texts, images, num_return_sequences=4, do_sample=True, max_new_tokens=max_new)
    assert model.training and all(m.training for m in model.modules())  # restored
    torch.manual_seed(123)
    second = generate(model, processor, texts, images, num_return_sequences=4, do_sample=True, max_new_tokens=max_new)
    assert second == first

    assert len(first) == 2 and all(len(row) == 4 for row in first)
    for row in first:
        for ids in row:
            assert ids and all(isinstance(t, int) for t in ids)
            assert not banned & set(ids)
            assert len(ids) <= max_new
            assert ids[-1] == eos or len(ids) == max_new
            assert eos not in ids[:-1]
    # an untrained model at temperature 1 gives different samples for a different seed
    torch.manual_seed(7)
    third = generate(model, processor, texts, images, num_return_sequences=4, do_sample=True, max_new_tokens=max_new)
    assert third != first

    model.eval()
    generate(model, processor, texts[:1], images[:1], do_sample=False, max_new_tokens=2)
    assert not model.training


def test_greedy_is_deterministic(tiny, family, task, grounding_records):
    model, processor = tiny
    texts, images = _prompts(family, task, grounding_records[:2])
    a = generate(model, processor, texts, images, do_sample=False, max_new_tokens=6)
    torch.manual_seed(999)
    b = generate(model, processor, texts, images, do_sample=False, max_new_tokens=6)
    assert a == b
    assert len(a) == 2 and all(len(row) == 1 for row in a)


def test_banned_tokens_suppressed_even_when_model_prefers_them(fresh_model, processor, family, task, grounding_records):
    """Boost the banned ids' logits far above everything: generate must still never emit them."""
    model = fresh_model
    banned = banned_token_ids(processor)

    def boost(module, inputs, output):
        output = output.clone()
        output[..., banned] += 1e4
        return output

    model.lm_head.register_forward_hook(boost)
    texts, images = _prompts(family, task, grounding_records[:1])
    for do_sample, n in ((False, 1), (True, 3)):  # greedy allows one sequence only
        torch.manual_seed(0)
        out = generate(model, processor, texts, images, num_return_sequences=n, do_sample=do_sample, max_new_tokens=5)
        assert len(out[0]) == n
        for ids in out[0]:
            assert ids and not set(banned) & set(ids)


def test_generate_needs_left_padding(tiny, family, task, grounding_records):
    model, processor = tiny
    processor = copy.deepcopy(processor)
    processor.tokenizer.padding_side = "right"
    texts, images = _prompts(family, task, grounding_records[:1])
    with pytest.raises(ValueError, match="left"):
        generate(model, processor, texts, images, max_new_tokens=2)


# -- 7. trim / decode --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, eos, pad, expected",
    [
        ([5, 6, 2, 0, 0], 2, 0, [5, 6, 2]),  # padding after EOS dropped
        ([5, 2, 7, 2], 2, 0, [5, 2]),  # first EOS wins
        ([2, 5], 2, 0, [2]),
        ([5, 6, 7], 2, 0, [5, 6, 7]),  # no EOS: kept as is
        ([5, 6, 0, 0], 2, 0, [5, 6]),  # no EOS: trailing pads dropped
        ([5, 0, 6, 0], 2, 0, [5, 0, 6]),  # inner pad kept
        ([0, 0], 2, 0, []),
        ([], 2, 0, []),
        ([5, 2, 2, 2], 2, 2, [5, 2]),  # pad == eos
    ],
)
def test_trim_at_eos(ids, eos, pad, expected):
    out = trim_at_eos(ids, eos, pad)
    assert out == expected
    assert all(type(t) is int for t in out)


def test_decode_strips_special_tokens(processor):
    tok = processor.tokenizer
    body = _ids(processor, "[0.12, 0.34, 0.56, 0.78]")
    ids = [tok.bos_token_id, tok.convert_tokens_to_ids("<image>"), *body, tok.eos_token_id, tok.pad_token_id]
    assert decode(processor, ids) == "[0.12, 0.34, 0.56, 0.78]"
    assert decode(processor, _ids(processor, "  3 ") + [tok.eos_token_id]) == "3"
    assert decode(processor, [tok.eos_token_id]) == ""


# -- 8. scored lists ---------------------------------------------------------------------------


def test_score_lists_unparsed_answers_score_zero():
    records = [{"id": "r0"}, {"id": "r1"}]
    texts = [["0.5", "junk", "1"], ["junk", "junk", "0.25"]]
    answers = [[[1], [2], [3]], [[4], [5], [6]]]

    def reward(text, record):
        return None if text == "junk" else float(text)

    scored = score_lists(reward, records, answers, texts)
    assert scored.rewards.dtype == torch.float32 and scored.parsed.dtype == torch.bool
    assert scored.rewards.tolist() == [[0.5, 0.0, 1.0], [0.0, 0.0, 0.25]]
    assert scored.parsed.tolist() == [[True, False, True], [False, False, True]]
    assert scored.spread.tolist() == [1.0, 0.25]
    assert scored.answers is answers and scored.texts is texts


def test_keep_mask_drops_small_and_zero_spread():
    rewards = torch.tensor([[0.25, 0.75], [0.5, 0.625], [0.5, 0.5], [0.0, 0.0]])
    scored = ScoredLists([[[1], [2]]] * 4, [["a", "b"]] * 4, rewards, torch.ones(4, 2, dtype=torch.bool))
    assert keep_mask(scored, 0.5).tolist() == [True, False, False, False]  # spread == margin kept
    assert keep_mask(scored, 0.2).tolist() == [True, False, False, False]
    assert keep_mask(scored, 0.1).tolist() == [True, True, False, False]
    assert keep_mask(scored, 0.0).tolist() == [True, True, False, False]  # zero spread never kept


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_reward_raises_naming_record(bad):
    records = [{"id": "ok-1"}, {"id": "grounding-1-000042"}]
    texts = [["a"], ["b"]]

    def reward(text, record):
        return bad if record["id"] == "grounding-1-000042" else 0.5

    with pytest.raises(ValueError, match="grounding-1-000042"):
        score_lists(reward, records, [[[1]], [[2]]], texts)


# -- 9. reference ------------------------------------------------------------------------------


def test_frozen_copy_reference(fresh_model, prefixes, list_answers, processor):
    policy = fresh_model
    policy.train()
    batch = build_list_batch(prefixes, [list_answers[0][:2]], processor.tokenizer.pad_token_id)

    ref = FrozenCopyReference(policy)
    assert isinstance(make_reference("copy", policy), FrozenCopyReference)
    with pytest.raises(ValueError, match="copy"):
        make_reference("nope", policy)
    assert not any(p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in policy.parameters())  # the policy is untouched
    ref.train()
    assert not ref.training and not any(m.training for m in ref.modules())
    parent = torch.nn.ModuleDict({"policy": policy, "ref": ref})
    parent.train()  # as Lightning does
    assert not any(m.training for m in ref.modules()) and policy.training

    ref_before = ref.logps(batch)
    assert not ref_before.sum.requires_grad
    with torch.no_grad():
        policy_before = answer_logps(policy, batch)
    torch.testing.assert_close(ref_before.sum, policy_before.sum)
    assert ref_before.num_tokens.tolist() == policy_before.num_tokens.tolist()

    opt = torch.optim.SGD(policy.parameters(), lr=0.05)
    opt.zero_grad()
    (-answer_logps(policy, batch).sum.sum()).backward()
    opt.step()

    with torch.no_grad():
        policy_after = answer_logps(policy, batch)
    assert (policy_after.sum - policy_before.sum).abs().max() > 1e-3  # the policy moved ...
    assert (policy_after.sum > policy_before.sum).all()  # ... up, as the step asked
    ref_after = ref.logps(batch)
    assert torch.equal(ref_after.sum, ref_before.sum)  # ... the reference did not
    assert all(p.grad is None for p in ref.parameters())


# -- 10. families ------------------------------------------------------------------------------


def test_answer_text_grounding_is_norm2_box(family, task, grounding_records):
    for rec in grounding_records:
        text = family.answer_text(rec, task)
        assert re.fullmatch(r"\[\d\.\d\d, \d\.\d\d, \d\.\d\d, \d\.\d\d\]", text), text
        assert text == "[" + ", ".join(f"{v:.2f}" for v in rec["target"]) + "]"
        parsed = family.box_format.parse(text)
        assert all(abs(a - b) <= 0.005 + 1e-9 for a, b in zip(parsed, rec["target"]))
    rec = dict(grounding_records[0], target=[0.125, 0.5, 0.75, 1.0])
    assert family.answer_text(rec, task) == "[0.12, 0.50, 0.75, 1.00]"  # f"{0.125:.2f}" == "0.12"


def test_answer_text_counting_and_ocr(processor):
    family = ChatFamily(processor, "norm2")
    counting = TaskSpec("counting", "How many {prompt} are there in the image?", 4)
    ocr = TaskSpec("ocr", "What is the text in the image?", 16)
    assert family.answer_text({"target": 3, "prompt": "circles"}, counting) == "3"
    assert family.answer_text({"target": 0, "prompt": "circles"}, counting) == "0"
    assert family.answer_text({"target": 4.0, "prompt": "circles"}, counting) == "4"
    assert family.answer_text({"target": "abc de", "prompt": ""}, ocr) == "abc de"


def test_prompt_text_layout(family, task, grounding_records):
    rec = grounding_records[0]
    text = family.prompt_text(rec, task)
    instruction = task.instruction.format(prompt=rec["prompt"])
    assert text == f"USER: <image>\n{instruction} ASSISTANT: "
    assert text.count("<image>") == 1
    assert text.endswith(" ASSISTANT: ")
    assert text.count("ASSISTANT:") == 1

    ocr = TaskSpec("ocr", "What is the text in the image?", 16)
    assert family.prompt_text({"prompt": ""}, ocr) == "USER: <image>\nWhat is the text in the image? ASSISTANT: "


def test_prompt_text_with_system_prompt(processor, task, grounding_records):
    family = ChatFamily(processor, "norm2", system_prompt="Answer briefly.")
    text = family.prompt_text(grounding_records[0], task)
    assert "Answer briefly." in text
    assert text.count("ASSISTANT:") == 1  # only the generation prompt
    assert text.endswith(" ASSISTANT: ")
    assert text.index("Answer briefly.") < text.index("USER:")


def test_gradient_checkpointing_gives_the_same_logps_and_gradients(tiny, list_batch):
    """model.gradient_checkpointing=true recomputes activations: same numbers, less memory."""
    import copy

    grads = []
    for checkpointing in (False, True):
        model = copy.deepcopy(tiny[0])
        model.train()
        if checkpointing:
            from perpo.models.loading import enable_activation_checkpointing

            enable_activation_checkpointing(model)  # what model.gradient_checkpointing=true runs
            assert model.is_activation_checkpointing
        lp = answer_logps(model, list_batch).sum
        lp.sum().backward()
        grads.append((lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (lp0, g0), (lp1, g1) = grads
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=0)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-4, msg=name)
