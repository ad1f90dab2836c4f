"""CPU benchmark: how perpo's own training step scales on this machine (list size, prompt length, online split).

Model: the embedded default tiny LLaVA (conf/model/tiny.yaml's arch: CLIP 64 px / patch 16 -> 16 image
tokens, hidden 64 x 2 layers; Llama hidden 128 x 4 layers), random init, fp32, sdpa attention, vision tower
frozen (the default ``vision_lr: 0``). For more image tokens the same arch is built at a larger image size
(CLIP's patch grid grows; everything else is unchanged).

Scoring step (tables 1 and 2), B lists per step: ``encode_prefixes`` (processor on the images and prompts)
-> ``build_batch`` (layout ``shared``: one packed row per list, or ``naive``: N copies of the prefix)
-> policy ``batch_logps`` -> ``FrozenCopyReference.logps`` -> ``perpo_loss`` (beta 0.1, gamma 0.5)
-> backward; no optimizer step. Answers are A random one-character tokens, rewards U(0, 1).

1. N = 2 ... 64 at the default prompt (16 image tokens + the grounding instruction and a referring expression);
2. the prompt grows at N = 8: image tokens 16 -> 576 (image size 64 -> 384 px at patch 16), then text tokens
   up to 2,048 (the instruction followed by filler characters, one token each) at 16 image tokens.

Token bound = LM tokens of naive / shared = N (P + A) / (P + N A): what shared can save at most.
ms/step: median of ``--repeats`` steps after one warm-up, shared and naive interleaved. Peak MiB: torch.profiler
(``profile_memory=True``) over one more step; the maximum of the running sum of the CPU allocator's
allocation/free events, with the gradients already allocated (zeroed, kept) so that they are not counted:
activations, logits, attention masks and temporaries (torch tensors only; not the weights, not glibc/Python).

3. The online step: ``perpo.training.module.PerPOModule.training_step`` (sample N answers -> rewards -> keep
-> build_batch -> policy + reference log-probs -> loss) + backward + AdamW step, built and instrumented as in
benchmarks/family_steps.py (its ``make_module``: grounding records, U(0, 1) rewards into the loss so that every
list is kept, reference ``copy``), here with full fine-tuning of the tiny model (the default: no LoRA) and
``scoring=shared``. Split: sampling = inside ``perpo.sampling.generation.generate``; scoring = the rest of
``training_step`` (rewards, batch, policy and reference forwards, loss), of which reference = the reference's
``logps``; backward = ``loss.backward()``; optimizer = AdamW step + zero_grad.

    python benchmarks/scaling.py            # writes benchmarks/scaling.md
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
import warnings
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/family_steps.py: the step instrumentation

ARCH = dict(OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml").arch))
BETA, GAMMA = 0.1, 0.5
KEEP_GRADS = False
LAYOUTS = ("shared", "naive")
INSTRUCTION = "Please provide the bounding box coordinate of the region this sentence describes: the red circle"


# -- scoring step --------------------------------------------------------------------------------


class Scorer:
    def __init__(self, image_size: int):
        from perpo.models.tiny import build_model, build_processor
        from perpo.training.reference import FrozenCopyReference

        arch = {**ARCH, "image_size": image_size}
        self.processor = build_processor(image_size=image_size, patch_size=arch["patch_size"])
        torch.manual_seed(0)
        self.model = build_model(self.processor.tokenizer, seed=0, **arch)
        self.model.config.text_config.max_position_embeddings = 4096  # the long-text rows (RoPE is computed)
        self.model.set_attn_implementation("sdpa")
        self.model.model.vision_tower.requires_grad_(False)
        self.model.train()
        self.reference = FrozenCopyReference(self.model)
        self.image_tokens = (image_size // arch["patch_size"]) ** 2
        self.params = sum(p.numel() for p in self.model.parameters())

    def lists(self, num_lists: int, n: int, text_tokens: int | None, answer_tokens: int, seed: int = 0):
        from PIL import Image

        rng = random.Random(seed)
        tok = self.processor.tokenizer
        text = INSTRUCTION
        if text_tokens is not None:  # filler characters (one token each) after the instruction
            base = len(tok(text, add_special_tokens=False)["input_ids"])
            text += " " + "".join(rng.choice(string.ascii_lowercase) for _ in range(max(text_tokens - base - 1, 0)))
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        size = self.processor.image_processor.crop_size["height"]
        images = [Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(3 * size * size)))
                  for _ in range(num_lists)]  # fmt: skip
        chars = [tok.convert_tokens_to_ids(c) for c in string.ascii_lowercase + string.digits]
        answers = [[[rng.choice(chars) for _ in range(answer_tokens)] for _ in range(n)] for _ in range(num_lists)]
        rewards = torch.tensor([[rng.random() for _ in range(n)] for _ in range(num_lists)])
        return [prompt] * num_lists, images, answers, rewards

    def prefix_tokens(self, prompts, images) -> int:
        return len(self.processor(images=[images[0]], text=[prompts[0]], return_tensors="pt")["input_ids"][0])

    def step(self, layout: str, prompts, images, answers, rewards) -> float:
        from perpo.listbatch.naive import encode_prefixes
        from perpo.listbatch.packed import batch_logps, build_batch
        from perpo.losses import perpo_loss

        t = time.perf_counter()
        prefixes = encode_prefixes(self.processor, prompts, images)
        batch = build_batch(prefixes, answers, self.processor.tokenizer.pad_token_id, layout=layout)
        policy = batch_logps(self.model, batch).sum
        ref = self.reference.logps(batch).sum
        perpo_loss(policy, ref, rewards, beta=BETA, gamma=GAMMA).mean().backward()
        self.model.zero_grad(set_to_none=not KEEP_GRADS)
        return time.perf_counter() - t


def torch_peak(fn) -> float:
    """MiB: maximum of the running sum of CPU allocator events (allocations +, frees -) over fn(),
    run once first so that the gradients exist (zeroed, kept) and are not counted."""
    from torch.profiler import ProfilerActivity, profile

    global KEEP_GRADS
    KEEP_GRADS = True
    try:
        fn()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        KEEP_GRADS = False
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def measure(scorer: Scorer, n: int, text_tokens, args) -> list[dict]:
    data = scorer.lists(args.lists, n, text_tokens, args.answer_tokens)
    p, a = scorer.prefix_tokens(*data[:2]), args.answer_tokens
    for layout in LAYOUTS:  # warm-up
        scorer.step(layout, *data)
    times = {layout: [] for layout in LAYOUTS}
    for r in range(args.repeats):
        for layout in LAYOUTS[r % 2 :] + LAYOUTS[: r % 2]:
            times[layout].append(scorer.step(layout, *data))
    rows = []
    for layout in LAYOUTS:
        med = statistics.median(times[layout])
        rows.append({"n": n, "layout": layout, "image": scorer.image_tokens, "text": p - scorer.image_tokens, "p": p,
                     "tokens": p + n * a if layout == "shared" else n * (p + a), "bound": n * (p + a) / (p + n * a),
                     "seconds": med, "lists_s": args.lists / med,
                     "peak": torch_peak(lambda: scorer.step(layout, *data))})  # fmt: skip
    rows[1]["speedup"] = rows[1]["seconds"] / rows[0]["seconds"]
    rows[1]["mem_ratio"] = rows[1]["peak"] / rows[0]["peak"]
    for r in rows:
        print(r, flush=True)
    return rows


# -- online step ---------------------------------------------------------------------------------


def online(sizes, repeats: int) -> list[dict]:
    import family_steps as fs
    from perpo.models.tiny import build_model, build_processor

    out = []
    for n in sizes:
        fs.N = n  # family_steps.make_module's list size
        processor = build_processor(image_size=ARCH["image_size"], patch_size=ARCH["patch_size"])
        torch.manual_seed(0)
        policy = build_model(processor.tokenizer, seed=0, **ARCH)
        policy.set_attn_implementation("sdpa")
        module, optimizer, reward = fs.make_module(policy, processor, "norm2", "copy", "shared")
        from perpo.models.parts import param_groups

        optimizer = torch.optim.AdamW(param_groups(module.policy, lr=fs.LR, vision_lr=0.0), lr=fs.LR)
        batch = fs.records()
        sampler, ref = module._timers
        runs = []
        for i in range(repeats + 1):  # the first is the warm-up
            sampler.seconds = ref.seconds = 0.0
            t0 = time.perf_counter()
            loss = module.training_step(batch, i)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            runs.append({"total": t3 - t0, "sampling": sampler.seconds, "scoring": t1 - t0 - sampler.seconds,
                         "reference": ref.seconds, "backward": t2 - t1, "optimizer": t3 - t2})  # fmt: skip
        med = {k: statistics.median(r[k] for r in runs[1:]) for k in runs[0]}
        med.update(n=n, answer=fs.answer_length(module, batch), records=len(batch))
        print(med, flush=True)
        out.append(med)
    return out


# -- report --------------------------------------------------------------------------------------


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| N | image tokens | text tokens | P | layout | LM tokens/step-list | token bound (naive/shared) | ms/step "
        "| lists/s | naive/shared time | peak MiB | naive/shared peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        extra = (f"| **{r['speedup']:.2f}x** | {r['peak']:.1f} | {r['mem_ratio']:.2f}x |" if "speedup" in r
                 else f"| - | {r['peak']:.1f} | - |")  # fmt: skip
        lines.append(
            f"| {r['n']} | {r['image']} | {r['text']} | {r['p']} | {r['layout']} | {r['tokens']} | {r['bound']:.2f}x "
            f"| {1000 * r['seconds']:.0f} | {r['lists_s']:.2f} " + extra
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[64, 128, 192, 256, 384],
                        help="px at patch 16: 16, 64, 144, 256, 576 image tokens")  # fmt: skip
    parser.add_argument("--text-tokens", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--prompt-n", type=int, default=8, help="N of the prompt-length rows")
    parser.add_argument("--online-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--lists", type=int, default=2, help="lists per scoring step (B)")
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    start = time.perf_counter()

    base = Scorer(ARCH["image_size"])
    n_rows = [r for n in args.sizes for r in measure(base, n, None, args)]
    prompt_rows = []
    for size in args.image_sizes:
        scorer = base if size == ARCH["image_size"] else Scorer(size)
        prompt_rows += measure(scorer, args.prompt_n, None, args)
    for text in args.text_tokens:
        prompt_rows += measure(base, args.prompt_n, text, args)
    steps = online(args.online_sizes, args.repeats)
    elapsed = time.perf_counter() - start

    parts = ("sampling", "scoring", "backward", "optimizer")
    online_lines = [
        "| N | records | mean answer tokens | s/step | sampling s | scoring s (of which reference) | backward s "
        "| optimizer s | sampling fraction | slowest part |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        slowest = max(parts, key=s.__getitem__)
        online_lines.append(
            f"| {s['n']} | {s['records']} | {s['answer']:.1f} | {s['total']:.3f} | {s['sampling']:.3f} "
            f"| {s['scoring']:.3f} ({s['reference']:.3f}) | {s['backward']:.3f} | {s['optimizer']:.3f} "
            f"| {100 * s['sampling'] / s['total']:.0f}% | {slowest} |"
        )
    worst = max(steps, key=lambda s: s["sampling"] / s["total"])
    frac = worst["sampling"] / worst["total"]
    rest = worst["total"] - worst["sampling"]
    slowest = max(parts, key=worst.__getitem__)
    target = min(0.5, frac)
    speedup = worst["sampling"] / (target / (1 - target) * rest) if frac > target else 1.0
    big = max(n_rows, key=lambda r: (r["n"], r["layout"] == "naive"))

    text = "\n".join([
        "# perpo scaling on this CPU (tiny LLaVA, fp32)",
        "",
        f"- command: `{' '.join(['python', *sys.argv])}`",
        (f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}; "
         f"{torch.get_num_threads()} torch threads; {_cpu_name()}; whole benchmark {elapsed:.0f} s; load average at "
         f"the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}"),
        (f"- model: embedded default tiny LLaVA ({base.params / 1e6:.2f} M parameters at 64 px; arch "
         f"{', '.join(f'{k} {v}' for k, v in ARCH.items())}), random init, sdpa attention, vision tower frozen"),
        (f"- scoring step (tables 1-2): B = {args.lists} lists per step; encode_prefixes + build_batch + policy and "
         f"reference log-probs + perpo_loss + backward (no optimizer step); A = {args.answer_tokens} answer tokens; "
         f"median of {args.repeats} steps after 1 warm-up, shared and naive interleaved"),
        ("- token bound = naive LM tokens / shared LM tokens per list = N(P+A)/(P+NA): the most shared can save; "
         "naive/shared time is the measured saving (bold)"),
        ("- peak MiB = torch.profiler allocator peak over one step with the gradients already allocated (not "
         "counted): activations, logits, masks, temporaries; torch tensors only"),
        "",
        "## 1. List size N (default prompt)",
        "",
        *table(n_rows),
        "",
        f"## 2. Prompt length at N = {args.prompt_n}: image tokens (image size at patch 16), then text tokens",
        "",
        *table(prompt_rows),
        "",
        "## 3. The online step: sampling, scoring, backward",
        "",
        ("`PerPOModule.training_step` + backward + AdamW, as benchmarks/family_steps.py builds and instruments it "
         f"(grounding, {steps[0]['records']} records per step, temperature 1, max_new_tokens 32, scoring=shared, "
         f"reference copy, full fine-tuning, vision frozen); median of {args.repeats} steps after 1 warm-up. "
         "Random weights seldom write EOS early: the answers run to the mean length in the table (max 32)."),
        "",
        *online_lines,
        "",
        "## Reading",
        "",
        (f"- Slowest part of the online step: **{slowest}** ({100 * worst[slowest] / worst['total']:.0f}% of the "
         f"step at N = {worst['n']}). Sampling is {100 * frac:.0f}% of the step there."),
        (f"- Target: sampling at most **{100 * target:.0f}%** of the online step (no more than scoring + backward + "
         f"optimizer together). At N = {worst['n']} that needs sampling {speedup:.1f}x faster "
         f"({worst['sampling']:.2f} s -> {worst['sampling'] / speedup:.2f} s per step) with the rest unchanged."
         if frac > target else
         f"- Target: keep sampling at most **{100 * target:.0f}%** of the online step; it is within it now."),
        (f"- Scoring: at the largest N ({big['n']}) naive/shared is {big.get('speedup', float('nan')):.2f}x in "
         f"time against a token bound of {big['bound']:.2f}x."),
        "",
    ])
    Path(args.out).write_text(text)
    print(text)


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main()
