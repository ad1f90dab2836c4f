"""Registry of the vision-language model families perpo runs, and the start-up check.

Every family goes through the same code path (``load_model`` -> ``ChatFamily`` -> batching ->
scoring); what differs is data, not code: the transformers class ``AutoModelForImageTextToText``
resolves to, the box text convention, the token that ends an answer, and notes on quirks. The
checkpoints' own chat templates do the prompt layout.

:func:`check_family` runs during config validation, before any model is loaded: an unknown family
or a transformers release without the family's class fails in about a second with one message
naming the family and the transformers version it needs. It does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FAMILIES", "TRANSFORMERS_FLOOR", "FamilyInfo", "check_family", "model_image_size"]

#: perpo's loading code uses the transformers 5 API (``dtype=``, v5 tokenizers and processors).
TRANSFORMERS_FLOOR = "5.0"


@dataclass(frozen=True)
class FamilyInfo:
    name: str
    model_class: str  # what AutoModelForImageTextToText resolves the checkpoint to
    processor_class: str
    added_in: str  # transformers release that introduced model_class
    box_format: str  # perpo.boxes name
    hub_id: str  # the default checkpoint (conf/model/<name>.yaml)
    eos_token: str | None = None  # token that ends an assistant answer, if not the tokenizer's EOS
    notes: str = ""

    @property
    def min_transformers(self) -> str:
        """The transformers version perpo needs for this family."""
        return max(self.added_in, TRANSFORMERS_FLOOR, key=_version_key)


FAMILIES: dict[str, FamilyInfo] = {
    f.name: f
    for f in [
        FamilyInfo(
            "llava15", "LlavaForConditionalGeneration", "LlavaProcessor", "4.36", "norm2",
            "llava-hf/llava-1.5-7b-hf", "</s>",
            "CLIP ViT-L/14-336 + Vicuna-7B; 'USER: <image>\\n... ASSISTANT:'; boxes as LLaVA-1.5's RefCOCO data, "
            "normalized [x1, y1, x2, y2] with 2 decimals. The embedded tiny default is this family.",
        ),
        FamilyInfo(
            "llava_next", "LlavaNextForConditionalGeneration", "LlavaNextProcessor", "4.39", "norm2",
            "llava-hf/llava-v1.6-mistral-7b-hf", "</s>",
            "AnyRes: pixel_values [1, 1 + crops, 3, 336, 336] per image, the crop count depends on the aspect "
            "ratio (batching must pad dim 1 when it differs); image_sizes per image. Mistral '[INST] ... [/INST]'.",
        ),
        FamilyInfo(
            "llava_onevision", "LlavaOnevisionForConditionalGeneration", "LlavaOnevisionProcessor", "4.45",
            "norm2", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "<|im_end|>",
            "SigLIP + Qwen2, AnyRes-max-9 (as llava_next: crops per image vary). Its processor has a video "
            "processor (torchvision); loaded image-only without it.",
        ),
        FamilyInfo(
            "qwen2_vl", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor", "4.45", "qwen2vl",
            "Qwen/Qwen2-VL-2B-Instruct", "<|im_end|>",
            "Boxes '<|box_start|>(x1,y1),(x2,y2)<|box_end|>' in 0-1000 (the box tokens are special: decoding "
            "drops them, the parser reads the bare numbers). pixel_values are [patches, C*T*P*P] for all images "
            "together (image_grid_thw [images, 3]), and the forward needs mm_token_type_ids (M-RoPE) for every "
            "row. Video processor needs torchvision; loaded image-only without it.",
        ),
        FamilyInfo(
            "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor", "4.49", "qwen25vl",
            "Qwen/Qwen2.5-VL-3B-Instruct", "<|im_end|>",
            "Boxes are absolute pixels of the image the model sees (resized by the processor to multiples of "
            "28, see model_image_size), JSON [{\"bbox_2d\": [x1, y1, x2, y2]}]. Otherwise as qwen2_vl.",
        ),
        FamilyInfo(
            "qwen3_vl", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", "4.57", "int1000",
            "Qwen/Qwen3-VL-2B-Instruct", "<|im_end|>",
            "Boxes [x1, y1, x2, y2] as integers 0-1000 (relative). 16-pixel patches, DeepStack. Otherwise as "
            "qwen2_vl.",
        ),
        FamilyInfo(
            "smolvlm", "SmolVLMForConditionalGeneration", "SmolVLMProcessor", "4.50", "norm2",
            "HuggingFaceTB/SmolVLM-256M-Instruct", "<end_of_utterance>",
            "Image splitting: pixel_values [1, crops, 3, 512, 512] + pixel_attention_mask per image, crops vary "
            "with the image size. No documented box format: norm2. Processor needs the num2words package; "
            "its video processor needs torchvision (loaded image-only without it).",
        ),
        FamilyInfo(
            "idefics3", "Idefics3ForConditionalGeneration", "Idefics3Processor", "4.46", "norm2",
            "HuggingFaceM4/Idefics3-8B-Llama3", "<end_of_utterance>",
            "As smolvlm (same image splitting and prompt layout), Llama-3 text model. No documented box format: "
            "norm2.",
        ),
        FamilyInfo(
            "gemma3", "Gemma3ForConditionalGeneration", "Gemma3Processor", "4.50", "norm2",
            "google/gemma-3-4b-it", "<end_of_turn>",
            "SigLIP 896 pooled to 256 image tokens; image tokens attend bidirectionally when token_type_ids "
            "(from the processor) reach the forward. Gated checkpoint (accept the licence on the hub). "
            "No documented box format: norm2.",
        ),
    ]
}  # fmt: skip


def _version_key(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(c for c in piece if c.isdigit()) if not piece.isdigit() else piece
        if not digits:
            break
        parts.append(int(digits))
        if not piece.isdigit():  # "0rc1", "24.dev0": stop at the first non-numeric piece
            break
    return tuple(parts)


def _installed_transformers() -> tuple[str | None, set[str]]:
    try:
        import transformers
    except ImportError:
        return None, set()
    return transformers.__version__, set(dir(transformers))  # dir() does not import torch


def check_family(name: str, *, transformers_version: str | None = None, available: set[str] | None = None) -> FamilyInfo:
    """The registered family ``name``, after checking that transformers can load it.

    Raises ``ValueError`` naming the family and the transformers version it needs when the family is
    unknown, the installed transformers is older than that version, or it lacks the model class.
    ``transformers_version`` / ``available`` (class names) default to the installed transformers.
    """
    if name not in FAMILIES:
        raise ValueError(f"model.family={name!r} is not known; choose one of {', '.join(sorted(FAMILIES))}")
    info = FAMILIES[name]
    if transformers_version is None or available is None:
        installed, names = _installed_transformers()
        transformers_version = installed if transformers_version is None else transformers_version
        available = names if available is None else available
    need = info.min_transformers
    upgrade = f"pip install -U 'transformers>={need},<6'"
    if transformers_version is None:
        raise ValueError(f"model.family={name} needs transformers>={need}, which is not installed: {upgrade}")
    if _version_key(transformers_version) < _version_key(need):
        raise ValueError(
            f"model.family={name} needs transformers>={need} ({info.model_class}; perpo uses the transformers "
            f"{TRANSFORMERS_FLOOR} API), but transformers {transformers_version} is installed: {upgrade}"
        )
    if info.model_class not in available:
        raise ValueError(
            f"model.family={name} needs {info.model_class}, which transformers {transformers_version} does not "
            f"have (it needs transformers>={need}): {upgrade}"
        )
    return info


def model_image_size(processor, width: int, height: int) -> tuple[int, int]:
    """(width, height) of the image as the model sees it, for absolute-pixel box formats.

    Qwen2-VL-style image processors resize to multiples of ``patch_size * merge_size`` within
    their pixel budget (``smart_resize``); Qwen2.5-VL's boxes are in pixels of that image. Other
    families' box formats are relative, so the original size is returned.
    """
    image_processor = getattr(processor, "image_processor", None)
    merge = getattr(image_processor, "merge_size", None)
    patch = getattr(image_processor, "patch_size", None)
    size = getattr(image_processor, "size", None)
    if not (merge and patch and size is not None):
        return int(width), int(height)
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    get = size.get if hasattr(size, "get") else lambda k, d=None: getattr(size, k, d)
    h, w = smart_resize(
        int(height), int(width), factor=patch * merge,
        min_pixels=get("shortest_edge") or get("min_pixels"), max_pixels=get("longest_edge") or get("max_pixels"),
    )  # fmt: skip
    return int(w), int(h)
