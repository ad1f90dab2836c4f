"""The image-unconditional switch: the same records with every image replaced by a blank one.

PerPO's question in miniature: how much of a model's answer (or of an alignment method's gain)
comes from the image? ``data.blank_image=true`` aligns on blank images (the paper's
"without image" ablation; the SFT warm start still sees the real ones), ``eval.blank_image=true``
evaluates on blank images. A blank image keeps the record's size, so the processor gives it
the same number of image tokens, and is uniform mid-gray (~0 after CLIP-style normalization).
"""

from __future__ import annotations

import datasets
from PIL import Image

BLANK_COLOUR = (127, 127, 127)


def blank_images(dataset: datasets.Dataset, colour: tuple[int, int, int] = BLANK_COLOUR) -> datasets.Dataset:
    """``dataset`` with each ``image`` replaced by a uniform image of the same size and mode RGB."""

    def blank(record):
        return {"image": Image.new("RGB", record["image"].size, colour)}

    return dataset.map(blank, desc="blank images", load_from_cache_file=False)
