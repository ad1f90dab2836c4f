"""The pixel space a model's absolute box coordinates refer to, added to every record."""

from __future__ import annotations


def with_box_space(splits, processor, box_format: str):
    """For pixel box formats (Qwen2.5-VL), give every record ``box_width`` / ``box_height``: the
    size of the image as the processor resizes it, which the model's box coordinates refer to.
    Relative formats need nothing (returned unchanged)."""
    from perpo.boxes import get_box_format
    from perpo.models.families import model_image_size

    if not get_box_format(box_format).absolute:
        return splits

    def add(record):
        w, h = model_image_size(processor, record["width"], record["height"])
        return {"box_width": w, "box_height": h}

    return {name: ds.map(add, desc=f"box space {name}") for name, ds in dict(splits).items()}
