"""The embedded default: a tiny LLaVA built from transformers config classes, no download.

It is a real ``LlavaForConditionalGeneration`` (CLIP vision tower + projector + Llama text
model) with a real ``LlavaProcessor`` (CLIP image processor + a fast tokenizer built here),
written with ``save_pretrained`` and loaded back by :func:`perpo.models.loading.load_model`
exactly as a hub id or a local checkpoint would be.

The tokenizer is character-level, except that each task instruction and each chat-template
phrase is one token: the paper's grounding prompt ("Please provide the bounding box
coordinate of the region this sentence describes: ...") then costs one token instead of 85.
On a 2-core CPU the step time is dominated by sequence length (CALIBRATION.md), so this keeps
the exact prompt text at almost no cost.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

# Special tokens, in id order.
PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
SPECIALS = [PAD, BOS, EOS, UNK, IMAGE]

# Template phrases that get one token each. Task instructions are listed by the task
# configs too; keep these in sync (a test checks every task instruction is one token).
USER, ASSISTANT = "USER:", " ASSISTANT:"
PHRASES = [
    USER,
    ASSISTANT,
    "Please provide the bounding box coordinate of the region this sentence describes:",
    "What is the text in the image?",
    "How many",
    "are there in the image?",
]

# Phrases added after the first tasks (the existence probe's "Is there {prompt} in the image?"):
# their ids come after every character, and build_model builds the model at the vocabulary
# without them before appending their embedding rows, so the weights of every earlier token --
# and the model the earlier tasks train -- stay exactly as they were.
LATE_PHRASES = [
    "Is there",
    "in the image?",
]

CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"

# LLaVA-1.5's conversation layout: "USER: <image>\n{text} ASSISTANT: {answer}</s>".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% for c in message['content'] %}{{ c['text'] }}{% endfor %} "
    "{% elif message['role'] == 'user' %}USER: "
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}"
    "{% else %} ASSISTANT: {% for c in message['content'] %}{{ c['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT: {% endif %}"
)


def char_level_tokenizer(specials, phrases=(), *, unk: str, late_phrases=(), **fast_kwargs):
    """A fast tokenizer with one token per special token, per phrase, per character and per late
    phrase (in that vocabulary order), for tiny models built offline: the embedded default and
    the test families. ``fast_kwargs`` go to ``PreTrainedTokenizerFast``."""
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(specials)}
    for piece in [*phrases, *CHARS, *late_phrases]:
        vocab.setdefault(piece, len(vocab))
    # Split into phrases (longest first) or single characters, keeping every piece.
    every = [*phrases, *late_phrases]
    alternatives = "".join(_regex_escape(p) + "|" for p in sorted(every, key=len, reverse=True))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{alternatives}[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # concatenate pieces back without separators
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, **fast_kwargs)


def build_tokenizer():
    """A fast tokenizer: one token per character, per special token and per template phrase."""
    fast = char_level_tokenizer(
        SPECIALS,
        PHRASES,
        unk=UNK,
        late_phrases=LATE_PHRASES,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="left",
        add_bos_token=False,
        add_eos_token=False,
        model_max_length=1024,
    )
    return fast


def _regex_escape(text: str) -> str:
    return "".join("\\" + c if c in r"\.^$|?*+()[]{}" else c for c in text)


def build_processor(image_size: int = 64, patch_size: int = 8):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=patch_size,
        vision_feature_select_strategy="default",  # drop CLS: image_size/patch squared tokens
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(
    tokenizer,
    *,
    image_size: int = 64,
    patch_size: int = 8,
    vision_hidden: int = 64,
    vision_layers: int = 2,
    text_hidden: int = 128,
    text_layers: int = 4,
    heads: int = 4,
    seed: int = 0,
):
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=vision_hidden,
    )
    vocab = tokenizer.get_vocab()
    late = [p for p in LATE_PHRASES if p in vocab]
    text = LlamaConfig(
        vocab_size=len(tokenizer) - len(late),  # the late phrases' rows are appended below
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attention_dropout=0.0,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    if late:  # after every other weight is drawn: those stay what they were without the late phrases
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def save_tiny(path: str | Path, *, seed: int = 0, **arch) -> Path:
    """Build the tiny model + processor and write them with ``save_pretrained``."""
    path = Path(path)
    image_size = arch.get("image_size", 64)
    patch_size = arch.get("patch_size", 8)
    processor = build_processor(image_size=image_size, patch_size=patch_size)
    model = build_model(processor.tokenizer, seed=seed, **arch)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
