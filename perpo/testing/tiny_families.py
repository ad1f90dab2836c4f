"""Tiny random-init instances of every supported model family, built offline.

Each builder makes the family's real transformers model class from its own config classes
(vision tower, projector and text model of the family, a few layers, hidden sizes 32-64), a
character-level fast tokenizer holding the family's special tokens, the family's own image
processor class (the PIL one, so torchvision is never needed) with small sizes, and a chat
template in the family's style. :func:`save_tiny_family` writes the pair with
``save_pretrained``; :func:`perpo.models.loading.load_model` then loads it exactly as it loads a
hub id, which is what ``tests/test_families.py`` checks for every family.

These are for tests and CPU smoke runs, not for learning anything: weights are random.

=================  =====================================  ============  =======================
family             model class                            vision        image tokens (64x64)
=================  =====================================  ============  =======================
llava15            LlavaForConditionalGeneration          CLIP 32/8     16
llava_next         LlavaNextForConditionalGeneration      CLIP 32/8     anyres: base + 2x2 grid
llava_onevision    LlavaOnevisionForConditionalGeneration SigLIP 32/8   anyres: base + 2x2 grid
qwen2_vl           Qwen2VLForConditionalGeneration        Qwen2-VL ViT  16 (8x8 patches, 2x2 merge)
qwen2_5_vl         Qwen2_5_VLForConditionalGeneration     Qwen2.5 ViT   16 (windowed attention)
qwen3_vl           Qwen3VLForConditionalGeneration        Qwen3 ViT     16 (deepstack layer 0)
smolvlm            SmolVLMForConditionalGeneration        SigLIP 32/8   4 per crop, 2x2 crops + global
idefics3           Idefics3ForConditionalGeneration       SigLIP 32/8   4 per crop, 2x2 crops + global
gemma3             Gemma3ForConditionalGeneration         SigLIP 32/8   4 (pooled 2x2)
=================  =====================================  ============  =======================

("32/8": 32-pixel input, 8-pixel patches.) Text models: 2 layers, hidden 64, 4 heads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perpo.models.tiny import char_level_tokenizer


# Shared tiny sizes (small enough that every family builds, saves and loads in ~1 s on CPU).
TEXT = dict(hidden=64, layers=2, heads=4, kv_heads=2)
VISION = dict(hidden=32, layers=1, heads=2)


# -- tokenizer -----------------------------------------------------------------------------------


def char_tokenizer(
    specials: list[str],
    *,
    pad: str,
    eos: str,
    unk: str,
    bos: str | None = None,
    named: dict[str, str] | None = None,
    chat_template: str | None = None,
):
    """Fast tokenizer: one token per character and per special token (the family's markup).

    ``specials`` come first in the vocabulary, in order. ``named`` gives some of them an
    attribute on the tokenizer (``{"image_token": "<image>"}`` -> ``tokenizer.image_token`` and
    ``tokenizer.image_token_id``), as the families' processors expect.
    """
    named = dict(named or {})
    reserved = {pad, eos, unk, bos, *named.values()}
    fast = char_level_tokenizer(
        specials,
        unk=unk,
        pad_token=pad,
        eos_token=eos,
        bos_token=bos,
        extra_special_tokens=named,
        padding_side="left",
        model_max_length=4096,
    )
    # Every other markup token is special too: split out before the character pre-tokenizer.
    others = [s for s in specials if s not in reserved]
    if others:
        fast.add_special_tokens({"extra_special_tokens": others}, replace_extra_special_tokens=False)
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def _text_kwargs(tokenizer, **extra) -> dict[str, Any]:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=TEXT["hidden"],
        intermediate_size=2 * TEXT["hidden"],
        num_hidden_layers=TEXT["layers"],
        num_attention_heads=TEXT["heads"],
        num_key_value_heads=TEXT["kv_heads"],
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def _finish(model, tokenizer):
    """Generation defaults every perpo sampler relies on."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


# -- chat templates (each family's layout, text and image items only) ---------------------------

LLAVA_MISTRAL_TEMPLATE = (
    "<s>{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% for c in message['content'] %}{{ c['text'] }}{% endfor %}{{ '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}[INST] "
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %} [/INST]"
    "{% else %} {% for c in message['content'] %}{{ c['text'] }}{% endfor %}</s>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %} {% endif %}"
)

# ChatML (Qwen2 text model of LLaVA-OneVision): image placeholder first, then a newline.
CHATML_ONEVISION_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen_template(default_system: bool) -> str:
    """Qwen-VL ChatML; Qwen2/2.5-VL insert a default system prompt, Qwen3-VL does not."""
    system = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        if default_system
        else ""
    )
    return (
        system + "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def _idefics_template(prefix: str) -> str:
    """Idefics3 / SmolVLM: "User:<image>text<end_of_utterance>\\nAssistant:"."""
    return (
        prefix + "{% for message in messages %}{{ message['role'] | capitalize }}"
        "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
        "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}"
        "{% elif c['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    )


GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{% if message['role'] == 'assistant' %}model{% else %}{{ message['role'] }}{% endif %}{{ '\\n' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<start_of_image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] | trim }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


# -- families ------------------------------------------------------------------------------------


def _llava15(seed: int):
    from perpo.models.tiny import build_model, build_processor

    processor = build_processor(image_size=32, patch_size=8)
    model = build_model(
        processor.tokenizer, image_size=32, patch_size=8, vision_hidden=VISION["hidden"],
        vision_layers=VISION["layers"], text_hidden=TEXT["hidden"], text_layers=TEXT["layers"],
        heads=TEXT["heads"], seed=seed,
    )  # fmt: skip
    return model, processor


PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]


def _clip_vision(image_size=32, patch_size=8):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=VISION["hidden"], intermediate_size=2 * VISION["hidden"], num_hidden_layers=VISION["layers"],
        num_attention_heads=VISION["heads"], image_size=image_size, patch_size=patch_size,
        projection_dim=VISION["hidden"],
    )  # fmt: skip


def _siglip_vision(image_size=32, patch_size=8, cls=None):
    if cls is None:
        from transformers import SiglipVisionConfig as cls
    return cls(
        hidden_size=VISION["hidden"], intermediate_size=2 * VISION["hidden"], num_hidden_layers=VISION["layers"],
        num_attention_heads=VISION["heads"], image_size=image_size, patch_size=patch_size,
    )  # fmt: skip


def _llava_next(seed: int):
    import torch
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
        MistralConfig,
    )  # fmt: skip

    tok = char_tokenizer(
        ["<unk>", "<s>", "</s>", "<pad>", "<image>", "[INST]", "[/INST]"],
        pad="<pad>", eos="</s>", unk="<unk>", bos="<s>", named={"image_token": "<image>"},
    )  # fmt: skip
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=LLAVA_MISTRAL_TEMPLATE,
    )  # fmt: skip
    config = LlavaNextConfig(
        vision_config=_clip_vision(),
        text_config=MistralConfig(**_text_kwargs(tok, sliding_window=None)),
        image_token_index=tok.image_token_id, vision_feature_layer=-1, vision_feature_select_strategy="default",
        image_grid_pinpoints=PINPOINTS, image_seq_length=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    return _finish(LlavaNextForConditionalGeneration(config), tok), processor


def _llava_onevision(seed: int):
    import torch
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
        Qwen2Config,
    )  # fmt: skip

    from perpo.models.loading import image_only_processor_class

    tok = char_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>", "<unk>"],
        pad="<|endoftext|>", eos="<|im_end|>", unk="<unk>",
        named={"image_token": "<image>", "video_token": "<video>"},
    )  # fmt: skip
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    processor = image_only_processor_class(LlavaOnevisionProcessor)(
        image_processor=image_processor, tokenizer=tok, num_image_tokens=16, vision_feature_select_strategy="full",
        chat_template=CHATML_ONEVISION_TEMPLATE, vision_aspect_ratio="anyres_max_9",
    )  # fmt: skip
    config = LlavaOnevisionConfig(
        vision_config=_siglip_vision(),
        text_config=Qwen2Config(**_text_kwargs(tok)),
        image_token_index=tok.image_token_id, video_token_index=tok.video_token_id, vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_grid_pinpoints=PINPOINTS, vision_aspect_ratio="anyres_max_9",
    )  # fmt: skip
    torch.manual_seed(seed)
    return _finish(LlavaOnevisionForConditionalGeneration(config), tok), processor


QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>", "<|box_start|>", "<|box_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<unk>",
]  # fmt: skip


def _qwen_processor(processor_cls, default_system: bool):
    from transformers import Qwen2VLImageProcessorPil

    from perpo.models.loading import image_only_processor_class

    tok = char_tokenizer(
        QWEN_SPECIALS, pad="<|endoftext|>", eos="<|im_end|>", unk="<unk>",
        named={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
               "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"},
    )  # fmt: skip
    # 8-pixel patches, 2x2 merge: a 64x64 image is 8x8 patches -> 16 tokens; pixels clamped to
    # [32x32, 64x64] so every test image stays tiny.
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64}, patch_size=8, merge_size=2, temporal_patch_size=2,
    )  # fmt: skip
    processor = image_only_processor_class(processor_cls)(
        image_processor=image_processor, tokenizer=tok, chat_template=_qwen_template(default_system)
    )
    return tok, processor


def _qwen_ids(tok) -> dict[str, int]:
    return dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )


# M-RoPE sections (temporal, height, width) must sum to head_dim / 2 = 64 / 4 / 2 = 8.
MROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}


# The three Qwen-VL generations share one shape: the Qwen tokenizer and processor, a vision
# config, a text config with M-RoPE, the same special-token ids. A row says what differs.
QWEN_VL = {
    "qwen2_vl": dict(
        module="qwen2_vl", prefix="Qwen2VL", default_system=True,
        vision=dict(depth=VISION["layers"], embed_dim=VISION["hidden"], hidden_size=TEXT["hidden"], num_heads=VISION["heads"],
                    mlp_ratio=2, patch_size=8, spatial_merge_size=2, temporal_patch_size=2),
        text=dict(rope_parameters=MROPE),
    ),
    "qwen2_5_vl": dict(
        module="qwen2_5_vl", prefix="Qwen2_5_VL", default_system=True,
        # window 32 px = 2x2 merged tokens per window; block 1 of 2 uses full attention (as 7, 15, ...)
        vision=dict(depth=2, hidden_size=VISION["hidden"], intermediate_size=2 * VISION["hidden"], num_heads=VISION["heads"],
                    out_hidden_size=TEXT["hidden"], patch_size=8, spatial_merge_size=2, temporal_patch_size=2,
                    window_size=32, fullatt_block_indexes=[1]),
        text=dict(rope_parameters=MROPE),
    ),
    "qwen3_vl": dict(
        module="qwen3_vl", prefix="Qwen3VL", default_system=False,
        vision=dict(depth=2, hidden_size=VISION["hidden"], intermediate_size=2 * VISION["hidden"], num_heads=VISION["heads"],
                    out_hidden_size=TEXT["hidden"], patch_size=8, spatial_merge_size=2, temporal_patch_size=2,
                    num_position_embeddings=64, deepstack_visual_indexes=[0]),
        text=dict(head_dim=16, rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True,
                                                "rope_theta": 10000.0}),
    ),
}  # fmt: skip


def _qwen_vl(seed: int, family: str):
    import copy
    import importlib

    import torch
    import transformers

    row = QWEN_VL[family]
    prefix = row["prefix"]
    configs = importlib.import_module(f"transformers.models.{row['module']}.configuration_{row['module']}")
    tok, processor = _qwen_processor(getattr(transformers, f"{prefix}Processor"), default_system=row["default_system"])
    vision = getattr(configs, f"{prefix}VisionConfig")(**row["vision"])
    text = getattr(configs, f"{prefix}TextConfig")(**_text_kwargs(tok, **copy.deepcopy(row["text"])))
    config = getattr(transformers, f"{prefix}Config")(text_config=text, vision_config=vision, **_qwen_ids(tok))
    torch.manual_seed(seed)
    return _finish(getattr(transformers, f"{prefix}ForConditionalGeneration")(config), tok), processor


def _idefics_tokens() -> list[str]:
    rows = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    return ["<|endoftext|>", "<|im_start|>", "<unk>", "<fake_token_around_image>", "<image>", "<end_of_utterance>",
            "<global-img>", *rows]  # fmt: skip


def _idefics_like(seed: int, *, smol: bool):
    import torch
    from transformers import LlamaConfig

    if smol:
        from transformers import SmolVLMConfig as Config
        from transformers import SmolVLMForConditionalGeneration as Model
        from transformers import SmolVLMImageProcessorPil as ImageProcessor
        from transformers import SmolVLMProcessor as Processor
        from transformers.models.smolvlm.configuration_smolvlm import (
            SmolVLMVisionConfig as VisionConfig,
        )

        from perpo.models.loading import image_only_processor_class

        Processor = image_only_processor_class(Processor)
        specials, bos, template = [*_idefics_tokens(), "<video>"], None, _idefics_template("<|im_start|>")
        named = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                 "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>",
                 "video_token": "<video>"}  # fmt: skip
    else:
        from transformers import Idefics3Config as Config
        from transformers import Idefics3ForConditionalGeneration as Model
        from transformers import Idefics3ImageProcessorPil as ImageProcessor
        from transformers import Idefics3Processor as Processor
        from transformers.models.idefics3.configuration_idefics3 import (
            Idefics3VisionConfig as VisionConfig,
        )

        specials = ["<|begin_of_text|>", *_idefics_tokens()]
        bos, template = "<|begin_of_text|>", _idefics_template("<|begin_of_text|>")
        named = {"image_token": "<image>"}

    tok = char_tokenizer(specials, pad="<|endoftext|>", eos="<end_of_utterance>", unk="<unk>", bos=bos, named=named)
    # 32-pixel crops of 8-pixel patches, pixel shuffle 2: 16 patches -> 4 tokens per crop.
    # A 64x64 image becomes 2x2 crops + one global view.
    image_processor = ImageProcessor(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )  # fmt: skip
    processor = Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=4, chat_template=template)
    config = Config(
        vision_config=_siglip_vision(cls=VisionConfig),
        text_config=LlamaConfig(**_text_kwargs(tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    return _finish(Model(config), tok), processor


def _gemma3(seed: int):
    import torch
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
    )
    from transformers.models.gemma3.configuration_gemma3 import Gemma3TextConfig

    tok = char_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
         "<end_of_image>", "<image_soft_token>"],
        pad="<pad>", eos="<end_of_turn>", unk="<unk>", bos="<bos>",
        named={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    )  # fmt: skip
    image_processor = Gemma3ImageProcessorPil(
        size={"height": 32, "width": 32}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]
    )
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_length=4, chat_template=GEMMA3_TEMPLATE
    )
    text = Gemma3TextConfig(
        **_text_kwargs(tok, head_dim=16, query_pre_attn_scalar=16, sliding_window=64, tie_word_embeddings=True)
    )
    config = Gemma3Config(
        text_config=text, vision_config=_siglip_vision(), mm_tokens_per_image=4,
        boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id, image_token_index=tok.image_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    return _finish(Gemma3ForConditionalGeneration(config), tok), processor


TINY_BUILDERS: dict[str, Callable[[int], tuple[Any, Any]]] = {
    "llava15": _llava15,
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    **{family: functools.partial(_qwen_vl, family=family) for family in QWEN_VL},
    "smolvlm": lambda seed: _idefics_like(seed, smol=True),
    "idefics3": lambda seed: _idefics_like(seed, smol=False),
    "gemma3": _gemma3,
}


def build_tiny_family(family: str, *, seed: int = 0):
    """``(model, processor)`` of a tiny random-init instance of ``family`` (in memory)."""
    if family not in TINY_BUILDERS:
        raise ValueError(f"no tiny builder for family {family!r}; known: {', '.join(sorted(TINY_BUILDERS))}")
    return TINY_BUILDERS[family](seed)


def save_tiny_family(family: str, path: str | Path, *, seed: int = 0) -> Path:
    """Build the tiny ``family`` instance and write it with ``save_pretrained`` (atomically)."""
    from perpo.models.loading import atomic_save_pretrained

    model, processor = build_tiny_family(family, seed=seed)
    return atomic_save_pretrained(model, processor, Path(path))
