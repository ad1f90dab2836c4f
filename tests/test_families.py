"""Every supported VLM family through perpo's one code path, on tiny random-init instances.

For each family of ``perpo.models.families.FAMILIES``: build a tiny instance from the family's own
transformers config classes (``perpo.testing.tiny_families``) -> ``save_pretrained`` -> load it
back with ``load_model`` exactly as a hub id -> ChatFamily prompt with an image -> processor ->
forward, box round trip in the family's box format, padded-batch scoring == one-by-one scoring,
greedy generation. Then LoRA (peft): the ``adapter_off`` reference equals the frozen copy at the
start, an optimizer step moves only adapter and projector weights, and the exported policy
(merged or adapter) loads with plain transformers.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from perpo.prompting import answer_ids

from perpo.listbatch.naive import build_list_batch, encode_prefixes
from perpo.boxes import box_iou
from perpo.prompting import ChatFamily
from perpo.models.families import (
    FAMILIES,
    TRANSFORMERS_FLOOR,
    FamilyInfo,
    check_family,
    model_image_size,
)
from perpo.testing.tiny_families import TINY_BUILDERS
from perpo.listbatch.logps import answer_logps

ROOT = Path(__file__).resolve().parents[1]
NAMES = sorted(FAMILIES)
LORA = dict(r=4, alpha=8, dropout=0.0)


# -- fixtures ----------------------------------------------------------------------------------


def _build_or_skip(name: str, path: Path) -> Path:
    from perpo.testing.tiny_families import save_tiny_family

    try:
        return save_tiny_family(name, path)
    except ImportError as err:  # e.g. SmolVLM's processor needs num2words
        pytest.skip(f"{name}: the processor cannot be built offline here: {err}")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> folder with the tiny instance written by save_pretrained (built on first use)."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = _build_or_skip(name, tmp_path_factory.mktemp(name) / "model")
        return cache[name]

    return get


@pytest.fixture(scope="module", params=NAMES)
def loaded(request, saved):
    """(family name, model in eval mode, processor) loaded with load_model. Do not mutate."""
    from perpo.models.loading import load_model

    name = request.param
    model, processor = load_model(saved(name), eos_token=FAMILIES[name].eos_token)
    model.eval()
    return name, model, processor


def _family(name: str, processor) -> ChatFamily:
    return ChatFamily(processor, FAMILIES[name].box_format)


def _prefixes(name, processor, task, records):
    family = _family(name, processor)
    return encode_prefixes(processor, [family.prompt_text(r, task) for r in records], [r["image"] for r in records])


def _model_inputs(batch, processor):
    """The batch's model inputs, which must carry the processor's per-token type ids (Qwen-VL
    ``mm_token_type_ids``, Gemma 3 ``token_type_ids``)."""
    inputs = batch.model_inputs()
    needed = {"mm_token_type_ids", "token_type_ids"} & set(getattr(processor, "model_input_names", []))
    missing = sorted(k for k in needed if k not in inputs)
    assert not missing, f"perpo.listbatch.naive dropped {missing}"
    return inputs


# -- registry and configs ----------------------------------------------------------------------


def test_registry_configs_and_builders_agree():
    from omegaconf import OmegaConf

    assert set(TINY_BUILDERS) == set(FAMILIES)
    assert len(FAMILIES) >= 9
    for name, info in FAMILIES.items():
        cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
        assert cfg.name == name and cfg.family == name, name
        assert cfg.path == info.hub_id and cfg.build_tiny is False, name
        assert cfg.box_format == info.box_format and cfg.eos_token == info.eos_token, name
        assert cfg.dtype == "bfloat16" and cfg.attn_implementation == "sdpa", name
        assert cfg.lora.enabled and (cfg.lora.r, cfg.lora.alpha) == (128, 256), name  # the paper's LoRA
        assert cfg.lora.target_modules is None and not cfg.lora.vision_trainable and cfg.lora.projector_trainable
        assert cfg.lora.save in ("merged", "adapter")
        assert check_family(name) is info
    expected = {"llava15": "norm2", "qwen2_vl": "qwen2vl", "qwen2_5_vl": "qwen25vl", "qwen3_vl": "int1000"}
    assert {k: FAMILIES[k].box_format for k in expected} == expected


def test_check_family_errors_name_family_and_version(monkeypatch):
    with pytest.raises(ValueError, match=r"model.family='nope' is not known; choose one of .*qwen2_vl"):
        check_family("nope")
    with pytest.raises(ValueError, match=rf"model.family=qwen3_vl needs transformers>={TRANSFORMERS_FLOOR} .*4\.40\.0 is installed"):
        check_family("qwen3_vl", transformers_version="4.40.0")
    with pytest.raises(ValueError, match=r"qwen2_5_vl needs Qwen2_5_VLForConditionalGeneration, which transformers 5\.1\.0 does not have"):
        check_family("qwen2_5_vl", transformers_version="5.1.0", available=set())
    future = FamilyInfo("future_vl", "FutureVLForConditionalGeneration", "FutureVLProcessor", "6.2", "norm2", "x/y")
    monkeypatch.setitem(FAMILIES, "future_vl", future)
    with pytest.raises(ValueError, match=r"model.family=future_vl needs transformers>=6\.2 .*pip install -U 'transformers>=6\.2,<6'"):
        check_family("future_vl")
    with pytest.raises(ValueError, match=r"future_vl needs FutureVLForConditionalGeneration"):
        check_family("future_vl", transformers_version="6.3.0")
    assert check_family("future_vl", transformers_version="6.10.1", available={future.model_class}) is future


# -- each family: load, prompt, forward ----------------------------------------------------------


def test_family_loads_like_a_hub_checkpoint_and_forwards(loaded, saved, task, grounding_records):
    import transformers

    name, model, processor = loaded
    info = FAMILIES[name]
    assert type(model).__name__ == info.model_class
    assert isinstance(processor, getattr(transformers, info.processor_class))
    config = json.loads((saved(name) / "processor_config.json").read_text())
    assert config["processor_class"] == info.processor_class  # a plain AutoProcessor checkpoint
    tok = processor.tokenizer
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert tok.eos_token == info.eos_token and model.generation_config.eos_token_id == tok.eos_token_id

    record = grounding_records[0]
    prompt = _family(name, processor).prompt_text(record, task)
    assert record["prompt"] in prompt and prompt.count(task.instruction.split(":")[0]) == 1
    enc = processor(images=[record["image"]], text=[prompt], return_tensors="pt")
    image_token = getattr(model.config, "image_token_id", None)
    image_token = getattr(model.config, "image_token_index", None) if image_token is None else image_token
    assert int((enc["input_ids"] == image_token).sum()) >= 4  # the processor expanded the image placeholder
    with torch.no_grad():
        logits = model(**enc, use_cache=False).logits
    assert logits.shape[:2] == enc["input_ids"].shape and logits.shape[-1] >= len(tok)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_box_round_trip_through_the_tokenizer(name, saved, task):
    """true box -> family answer text -> token ids -> decoded text (special tokens dropped) -> box."""
    from perpo.models.loading import load_processor
    from perpo.sampling.generation import decode

    processor = load_processor(saved(name))
    family = _family(name, processor)
    # boxes every format writes exactly (2 decimals, 0-1000 integers, pixels of 64x48 / 64x64)
    for box, (w, h) in [([0.25, 0.5, 0.75, 1.0], (64, 48)), ([0.0, 0.25, 0.5, 0.75], (64, 64))]:
        record = {"prompt": "x", "target": box, "width": w, "height": h}
        text = family.answer_text(record, task)
        ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert processor.tokenizer.unk_token_id not in ids, text
        decoded = decode(processor, ids)
        parsed = family.box_format.parse(decoded, w, h)
        assert parsed is not None, (text, decoded)
        assert box_iou(parsed, box) == pytest.approx(1.0, abs=1e-9), (text, decoded, parsed)
    if name == "qwen2_vl":
        assert text == "<|box_start|>(0,250),(500,750)<|box_end|>"
        assert decoded == "(0,250),(500,750)"  # box tokens are special, as in Qwen2-VL's tokenizer


def test_padded_batch_scores_equal_one_by_one(loaded, task, grounding_records):
    """Summed answer log-probs: each answer alone (batch size 1) == inside a padded [2 x 3] batch.

    The two images differ in size, so the records differ in image tokens, LLaVA-NeXT / OneVision /
    Idefics3 / SmolVLM crops and Qwen-VL patches.
    """
    name, model, processor = loaded
    tok, family = processor.tokenizer, _family(name, processor)
    wide = dict(grounding_records[1], image=grounding_records[1]["image"].resize((64, 32)), width=64, height=32)
    records = [grounding_records[0], wide]
    prefixes = _prefixes(name, processor, task, records)  # images with different crop counts stack (zero-padded)
    answers = [
        answer_ids(tok, [family.answer_text(r, task), "[0.1, 0.2, 0.3, 0.4] and more", "no"]) for r in records
    ]
    batch = build_list_batch(prefixes, answers, tok.pad_token_id)
    inputs = _model_inputs(batch, processor)
    with torch.no_grad():
        together = answer_logps(model, batch)
    assert together.sum.shape == (2, 3) and torch.isfinite(together.sum).all() and (together.sum < 0).all()
    assert together.num_tokens.tolist() == [[len(a) for a in lst] for lst in answers]
    alone = torch.zeros(2, 3)
    for b in range(2):
        for k in range(3):
            single = build_list_batch(prefixes, [[answers[b][k]]], tok.pad_token_id, select=[b])
            assert not (single.attention_mask == 0).any()  # one row: no padding at all
            with torch.no_grad():
                alone[b, k] = answer_logps(model, single).sum[0, 0]
    torch.testing.assert_close(together.sum, alone, rtol=1e-5, atol=1e-5)
    assert set(inputs) >= {"input_ids", "attention_mask", "pixel_values"}


def test_greedy_generation(loaded, task, grounding_records):
    from perpo.sampling.generation import banned_token_ids, generate

    name, model, processor = loaded
    family = _family(name, processor)
    records = grounding_records[:2]
    out = generate(
        model, processor, [family.prompt_text(r, task) for r in records], [r["image"] for r in records],
        do_sample=False, max_new_tokens=3,
    )  # fmt: skip
    assert len(out) == 2 and all(len(row) == 1 and 1 <= len(row[0]) <= 3 for row in out)
    assert not set(banned_token_ids(processor)) & {t for row in out for t in row[0]}


# -- processors without torchvision ------------------------------------------------------------


def test_image_only_processors_keep_their_settings(saved, tmp_path):
    """Qwen-VL / OneVision / SmolVLM processors load without torchvision, settings intact."""
    import shutil

    from transformers.utils import is_torchvision_available

    from perpo.models.loading import NoVideoProcessor, load_processor

    onevision = load_processor(saved("llava_onevision"))  # image-only: the tiny has no video settings
    assert (onevision.num_image_tokens, onevision.vision_aspect_ratio) == (16, "anyres_max_9")
    assert isinstance(onevision.video_processor, NoVideoProcessor)
    with pytest.raises(RuntimeError, match="torchvision"):
        onevision.video_processor([])
    assert load_processor(saved("smolvlm")).image_seq_len == 4
    qwen = load_processor(saved("qwen2_vl"))
    assert type(qwen.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert (qwen.image_processor.patch_size, qwen.image_processor.merge_size) == (8, 2)
    assert qwen.get_attributes() == ["image_processor", "tokenizer"]

    # A hub checkpoint's video settings survive load -> save, so the saved folder loads with
    # plain AutoProcessor where torchvision is installed.
    ckpt = tmp_path / "ckpt"
    shutil.copytree(saved("qwen2_vl"), ckpt)
    video = {"video_processor_type": "Qwen2VLVideoProcessor", "fps": 2.0, "merge_size": 2, "patch_size": 8}
    (ckpt / "video_preprocessor_config.json").write_text(json.dumps(video))
    if is_torchvision_available():
        pytest.skip("torchvision is installed: AutoProcessor loads the video processor itself")
    reloaded = load_processor(ckpt)
    assert isinstance(reloaded.video_processor, NoVideoProcessor)
    reloaded.save_pretrained(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "video_preprocessor_config.json").read_text()) == video
    assert json.loads((tmp_path / "out" / "processor_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"


def test_load_model_eos_token(saved):
    from perpo.models.loading import load_model

    model, processor = load_model(saved("qwen2_vl"), eos_token="<|endoftext|>")
    assert processor.tokenizer.eos_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    with pytest.raises(ValueError, match="model.eos_token='<nope>' is not a token"):
        load_model(saved("qwen2_vl"), eos_token="<nope>")


def test_check_family_does_not_import_torch():
    """Config validation calls check_family before torch is imported (about a second)."""
    import subprocess
    import sys

    code = (
        "import sys; from perpo.models.families import check_family; check_family('qwen3_vl'); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_model_image_size_for_absolute_pixel_boxes(saved):
    from perpo.models.loading import load_processor

    qwen = load_processor(saved("qwen2_5_vl"))  # 16-pixel units, 32x32 .. 64x64 pixels
    assert model_image_size(qwen, 64, 64) == (64, 64)
    assert model_image_size(qwen, 100, 30) == (96, 32)
    assert model_image_size(load_processor(saved("llava15")), 100, 30) == (100, 30)


# -- LoRA --------------------------------------------------------------------------------------


def test_lora_targets_language_model_only(loaded):
    from perpo.models.lora import apply_lora
    from perpo.models.parts import is_projector, is_vision_tower

    _, model, _ = loaded
    policy = apply_lora(copy.deepcopy(model), **LORA)
    lora_layers = [n for n, _ in policy.named_modules() if n.endswith(".lora_A")]
    assert lora_layers and not [n for n in lora_layers if is_vision_tower(n) or is_projector(n)]
    n_language = sum(1 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)) - sum(
        1 for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and (is_vision_tower(n) or is_projector(n))
    )
    assert len(lora_layers) == n_language - 1  # every language linear layer except the output head
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)
    assert any("modules_to_save" in n for n in trainable)  # the projector, trained in full
    assert not [n for n in trainable if is_vision_tower(n)]
    vision_linear = next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and is_vision_tower(n))
    with pytest.raises(ValueError, match="vision-tower / projector"):
        apply_lora(copy.deepcopy(model), target_modules=[vision_linear], **LORA)


def test_lora_reference_adapter_off_equals_copy_and_only_adapter_moves(loaded, task, grounding_records):
    from perpo import losses
    from perpo.models.lora import apply_lora
    from perpo.models.parts import param_groups
    from perpo.training.reference import AdapterOffReference, FrozenCopyReference, make_reference

    name, model, processor = loaded
    tok, family = processor.tokenizer, _family(name, processor)
    prefixes = _prefixes(name, processor, task, grounding_records[:1])
    answers = [answer_ids(tok, [family.answer_text(grounding_records[0], task), "[0.1, 0.2, 0.3, 0.4]", "no"])]
    batch = build_list_batch(prefixes, answers, tok.pad_token_id)
    _model_inputs(batch, processor)

    with pytest.raises(ValueError, match="adapter_off needs a LoRA policy"):
        make_reference("adapter_off", model)
    policy = apply_lora(copy.deepcopy(model), **LORA)
    policy.train()
    copy_ref, off_ref = make_reference("copy", policy), make_reference("adapter_off", policy)
    assert isinstance(copy_ref, FrozenCopyReference) and isinstance(off_ref, AdapterOffReference)
    assert not list(off_ref.parameters())  # no second copy of the weights

    # At the start (B = 0) both references give the same log-probs and the same loss.
    a, b = copy_ref.logps(batch), off_ref.logps(batch)
    torch.testing.assert_close(a.sum, b.sum, rtol=1e-5, atol=1e-5)
    assert policy.training  # adapter_off scored in eval mode and restored the mode
    rewards = torch.tensor([[1.0, 0.5, 0.0]])
    policy_lp = answer_logps(policy, batch)
    loss_copy = losses.perpo_loss(policy_lp.sum, a.sum, rewards, beta=0.1, gamma=0.5)
    loss_off = losses.perpo_loss(policy_lp.sum, b.sum, rewards, beta=0.1, gamma=0.5)
    torch.testing.assert_close(loss_copy, loss_off, rtol=1e-6, atol=1e-6)

    # One AdamW step (perpo's param groups, vision frozen): only adapter / projector copies move.
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    opt = torch.optim.AdamW(param_groups(policy, lr=1e-2, vision_lr=0), lr=1e-2, weight_decay=0.0)
    loss_off.mean().backward()
    opt.step()
    changed = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_B" in n or "modules_to_save" in n for n in changed), sorted(changed)[:5]
    assert any("lora_B" in n for n in changed)  # (lora_A gets no gradient while B is zero)
    frozen = {n for n, p in policy.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & changed
    with torch.no_grad():
        moved = answer_logps(policy.eval(), batch).sum
    assert (moved - a.sum).abs().max() > 1e-4  # the policy moved ...
    torch.testing.assert_close(off_ref.logps(batch).sum, b.sum, rtol=1e-5, atol=1e-5)  # ... pi_ref did not


@pytest.mark.parametrize("name", ["llava15", "qwen2_vl"])
@pytest.mark.parametrize("merge", [True, False])
def test_export_policy_loads_with_plain_transformers(name, merge, saved, tmp_path, task, grounding_records):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import is_torchvision_available

    from perpo.models.loading import load_model
    from perpo.models.lora import apply_lora, export_policy

    model, processor = load_model(saved(name))
    policy = apply_lora(model, **LORA)
    with torch.no_grad():  # give the adapter and the projector copy non-zero updates
        for n, p in policy.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    policy.eval()
    out = export_policy(policy, tmp_path / "policy", merge, processor=processor)
    files = {p.name for p in out.iterdir()}
    assert ("adapter_config.json" in files) is (not merge) and ("config.json" in files) is merge
    assert "tokenizer.json" in files
    assert type(policy).__name__ == "PeftModel"  # merged on a copy: the policy keeps its adapter

    reloaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    if is_torchvision_available() or name == "llava15":
        AutoProcessor.from_pretrained(out)
    enc = processor(images=[grounding_records[0]["image"]], text=[_family(name, processor).prompt_text(grounding_records[0], task)], return_tensors="pt")
    with torch.no_grad():
        expected = policy(**enc, use_cache=False).logits
        got = reloaded(**enc, use_cache=False).logits
        with policy.disable_adapter():
            original = policy(**enc, use_cache=False).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert (expected - original).abs().max() > 1e-3  # the export holds the trained weights


def test_param_groups_keep_every_lora_trainable_parameter(loaded):
    """perpo.models.parts.param_groups (vision frozen) must not freeze or drop adapter / projector weights."""
    from perpo.models.lora import apply_lora
    from perpo.models.parts import param_groups

    _, model, _ = loaded
    policy = apply_lora(copy.deepcopy(model), **LORA)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    groups = param_groups(policy, lr=1e-3, vision_lr=0)
    grouped = {id(p) for g in groups for p in g["params"]}
    lost = sorted(n for n, p in policy.named_parameters() if n in trainable and (id(p) not in grouped or not p.requires_grad))
    assert not lost, lost[:5]  # Qwen3-VL's visual.deepstack_merger_list is a projector (PROJECTOR_NAMES)


def test_shared_prefix_scoring_equals_naive_or_falls_back(loaded, task, grounding_records):
    """scoring=auto: a family that takes the packed layout scores it exactly as the naive one
    (1e-5); one that cannot (M-RoPE, per-token type ids) falls back to naive with a reason."""
    from perpo.listbatch.packed import batch_logps, build_batch, resolve_layout

    name, model, processor = loaded
    tok, family = processor.tokenizer, _family(name, processor)
    records = grounding_records[:2]
    prefixes = _prefixes(name, processor, task, records)
    answers = [answer_ids(tok, [family.answer_text(r, task), "[0.1, 0.2]", "no"]) for r in records]
    naive = build_list_batch(prefixes, answers, tok.pad_token_id)
    layout = resolve_layout("auto", model, processor)
    expected_naive = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3"}
    assert (layout == "naive") == (name in expected_naive), (name, layout)
    if layout == "naive":
        return
    with torch.no_grad():
        want = answer_logps(model, naive).sum
        got = batch_logps(model, build_batch(prefixes, answers, tok.pad_token_id, layout="shared")).sum
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_sampling_bans_the_models_own_image_placeholder(loaded):
    """Gemma 3's processor.image_token is <start_of_image>, but the model counts <image_soft_token>:
    a sampled placeholder would break the next forward, so the config's id is banned too."""
    from perpo.sampling.generation import banned_token_ids

    name, model, processor = loaded
    banned = set(banned_token_ids(processor, model))
    for key in ("image_token_id", "image_token_index"):
        value = getattr(model.config, key, None)
        if isinstance(value, int):
            assert value in banned, (name, key)
    assert processor.tokenizer.eos_token_id not in banned


def test_qwen25_boxes_are_in_pixels_of_the_resized_image(saved, task, grounding_records):
    """Qwen2.5-VL answers in pixels of the image its processor resized: the pipeline gives each
    record box_width/box_height; the answer text uses them and the reward reads them back."""
    import datasets

    from perpo.models.families import model_image_size
    from perpo.models.loading import load_processor
    from perpo.data.box_space import with_box_space
    from perpo.rewards.registry import get_reward

    processor = load_processor(saved("qwen2_5_vl"))
    record = dict(grounding_records[0], image=grounding_records[0]["image"].resize((100, 60)), width=100, height=60)
    ds = datasets.Dataset.from_list([{k: v for k, v in record.items() if k != "image"}])
    out = with_box_space({"test": ds}, processor, "qwen25vl")["test"][0]
    w, h = model_image_size(processor, 100, 60)
    assert (out["box_width"], out["box_height"]) == (w, h) and (w, h) != (100, 60)
    text = ChatFamily(processor, "qwen25vl").answer_text(out, task)
    x1 = round(out["target"][0] * w)
    assert f"[{x1}," in text.replace(" ", "")  # pixels of the resized image, not of the original
    from perpo.answers import parse_box

    parsed = parse_box(text, out, box_format="qwen25vl")  # integer pixels: the target quantized to them
    quantized = [round(v * s) / s for v, s in zip(out["target"], (w, h, w, h))]
    assert parsed == pytest.approx(quantized, abs=1e-9)
    assert get_reward("iou")(text, out, box_format="qwen25vl") > 0.85
    # relative formats are left alone
    assert with_box_space({"test": ds}, processor, "norm2")["test"] is ds
