"""CPU benchmark: sampling N answers per prompt, expand vs shared prefill (perpo.sampling.generation.generate).

- expand: ``model.generate(num_return_sequences=N)``: transformers repeats the prompts N times
          before the prefill, so the language model prefills N * P tokens per prompt (transformers
          5 encodes each image once and repeats the features, so the vision tower runs once);
- shared: one forward of the B prompts (image + P - 1 prompt tokens) fills the KV cache, which
          is repeated N ways; generate continues from it (last prompt token + new tokens).

Shape of benchmarks/list_scoring.py: the ~3M-parameter tiny LLaVA (CLIP 192 px / patch 16 ->
144 image tokens, Llama hidden 256 x 4 layers), 144 image + 24 prompt tokens, 12 new tokens,
sampling at temperature 1 with the seeded sampler training uses: ``generate(row_seeds=...)`` with
one ``record_seed(seed, step, id)`` per prompt, as ``perpo.training.module.PerPOModule.training_step``
calls it. Both modes run in the same process, interleaved, median over repeats, from the same row
seeds (they draw the same samples, which is checked).

    python benchmarks/sampling.py            # writes benchmarks/sampling.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import string
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from list_scoring import IMAGE_SIZE, IMAGE_TOKENS, PATCH, PROMPT_TOKENS, _cpu_name, build  # noqa: E402

from perpo.models.tiny import build_processor  # noqa: E402
from perpo.sampling.generation import generate, record_seed  # noqa: E402

NEW_TOKENS = 12
MODES = ("expand", "shared")


def make_prompts(processor, num_prompts: int, seed: int = 0):
    """Prompts of exactly 144 image + 24 other tokens (character-level tokenizer), random images."""
    rng = random.Random(seed)
    text_chars = PROMPT_TOKENS - 5  # "USER:", " ", "\n", " ASSISTANT:", " " around the text
    texts = [
        f"USER: <image>\n{''.join(rng.choice(string.ascii_letters) for _ in range(text_chars))} ASSISTANT: "
        for _ in range(num_prompts)
    ]
    g = torch.Generator().manual_seed(seed)
    images = [
        Image.fromarray(torch.randint(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), generator=g, dtype=torch.uint8).numpy())
        for _ in range(num_prompts)
    ]
    ids = processor(images=[[i] for i in images], text=texts, return_tensors="pt", padding=True)["input_ids"]
    assert ids.shape == (num_prompts, IMAGE_TOKENS + PROMPT_TOKENS), ids.shape
    return texts, images


SEED, STEP = 42, 0


def run(model, processor, texts, images, n: int, mode: str):
    # each prompt's N samples from its own seed, as the training step draws them
    row_seeds = [record_seed(SEED, STEP, f"prompt-{i}") for i in range(len(texts))]
    t = time.perf_counter()
    out = generate(
        model, processor, texts, images, num_return_sequences=n, max_new_tokens=NEW_TOKENS, prefill=mode,
        temperature=1.0, top_p=1.0, row_seeds=row_seeds,
    )  # fmt: skip
    return time.perf_counter() - t, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 8, 20])
    parser.add_argument("--prompts", type=int, default=4, help="prompts per generate call (B)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--note", default="", help="a line added to the report")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    args = parser.parse_args()

    model = build("sdpa")
    processor = build_processor(IMAGE_SIZE, PATCH)
    params = sum(p.numel() for p in model.parameters())
    texts, images = make_prompts(processor, args.prompts)
    b, p = args.prompts, IMAGE_TOKENS + PROMPT_TOKENS
    rows = []
    for n in args.sizes:
        samples = {mode: run(model, processor, texts, images, n, mode)[1] for mode in MODES}  # warm-up
        same = samples["expand"] == samples["shared"]
        lengths = [len(ids) for row in samples["shared"] for ids in row]
        times = {mode: [] for mode in MODES}
        for r in range(args.repeats):
            for mode in MODES[r % 2 :] + MODES[: r % 2]:  # alternate the order
                times[mode].append(run(model, processor, texts, images, n, mode)[0])
        med = {k: statistics.median(v) for k, v in times.items()}
        prefill_tokens = {"expand": n * p, "shared": (p - 1) + n}
        for mode in MODES:
            rows.append(
                f"| {n} | {mode} | {prefill_tokens[mode]} | {1000 * med[mode]:.0f} | {b / med[mode]:.2f} "
                f"| {b * n / med[mode]:.1f} | "
                + (f"{med['expand'] / med['shared']:.2f}x | {same} | {statistics.mean(lengths):.1f} |"
                   if mode == "shared" else "- | - | - |")
            )  # fmt: skip
            print(rows[-1], flush=True)

    text = "\n".join([
        "# Sampling benchmark: expand vs shared prefill",
        "",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}; "
        f"{torch.get_num_threads()} threads; {platform.processor() or platform.machine()}, {_cpu_name()}; "
        f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- model: tiny LLaVA, {params / 1e6:.1f} M parameters (CLIP {IMAGE_SIZE} px / patch {PATCH}, "
        "Llama hidden 256 x 4 layers), fp32, attention `sdpa`, eval mode (as generate runs it)",
        f"- shape: B = {b} prompts per generate call of P = {IMAGE_TOKENS} image + {PROMPT_TOKENS} prompt = {p} "
        f"tokens, {NEW_TOKENS} new tokens max, sampling (temperature 1, top_p 1) with the training step's seeded "
        f"sampler (`generate(row_seeds=[record_seed({SEED}, {STEP}, id)])`, one seed per prompt), the same seeds "
        f"for both modes; median of {args.repeats} interleaved calls after one warm-up",
        "- prefill tokens/prompt = prompt tokens the language model runs per prompt before the first new "
        "token (expand N*P; shared P-1 once + the last prompt token on each of the N rows); the vision "
        "tower encodes each image once in both modes (transformers 5 pre-encodes images before expanding)",
        "- same samples: expand and shared returned identical token ids for the seeds; mean len: mean "
        "answer length in tokens (EOS included)",
        *([f"- note: {args.note}"] if args.note else []),
        "",
        "| N | prefill | prefill tokens/prompt | ms/call | prompts/s | samples/s | shared speedup | same samples | mean len |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])  # fmt: skip
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
