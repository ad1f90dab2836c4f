"""CPU benchmark: scoring lists of N answers, naive N copies vs shared prefix vs pair expansion.

One training step of the policy (build batch, forward, loss, backward) for B lists of N answers
at a scaled LLaVA-like shape: 144 image tokens + 24 prompt tokens (P = 168), answers of A = 12
tokens, a tiny LLaVA from perpo.models.tiny (CLIP 192 px / patch 16, Llama hidden 256 x 4 layers).

- naive:  every answer gets its own copy of the prefix (perpo.listbatch.naive.build_list_batch);
          N * (P + A) LM tokens and N vision passes per list;
- shared: one packed row per list (perpo.listbatch.packed.pack_lists); P + N*A tokens, 1 image;
- pairs:  TRL-style expansion into N-1 (best, other) pairs = 2(N-1) rows of P + A, DPO loss.

The three are timed in the same process, interleaved, median over repeats. Peak memory is the
rise of the resident set (VmHWM, reset through /proc/self/clear_refs) over one first step in a
fresh subprocess per (N, layout). FLOPs of the shared step come from torch's FlopCounterMode and
are compared with this machine's fp32 matmul rate.

    python benchmarks/list_scoring.py            # writes benchmarks/list_scoring.md
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from perpo.listbatch.naive import Prefixes, build_list_batch
from perpo.losses import dpo_loss, perpo_loss
from perpo.listbatch.logps import answer_logps
from perpo.listbatch.packed import pack_lists, packed_answer_logps

IMAGE_SIZE, PATCH = 192, 16
IMAGE_TOKENS = (IMAGE_SIZE // PATCH) ** 2  # 144 ("default" strategy drops CLS)
PROMPT_TOKENS, ANSWER_TOKENS = 24, 12
PAD = 0
LAYOUTS = ("naive", "shared", "pairs")


def build(attn: str = "sdpa"):
    from perpo.models.tiny import build_model, build_processor

    tok = build_processor(IMAGE_SIZE, PATCH).tokenizer
    model = build_model(
        tok, image_size=IMAGE_SIZE, patch_size=PATCH, vision_hidden=128, vision_layers=2,
        text_hidden=256, text_layers=4, heads=4, seed=0,
    )  # fmt: skip
    model.set_attn_implementation(attn)
    return model.train()


def make_lists(model, num_lists: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.text_config.vocab_size
    image = model.config.image_token_id
    ids = [[1] + [image] * IMAGE_TOKENS + torch.randint(5, vocab, (PROMPT_TOKENS - 1,), generator=g).tolist()
           for _ in range(num_lists)]  # fmt: skip
    pixels = torch.randn(num_lists, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    answers = [[torch.randint(5, vocab, (ANSWER_TOKENS,), generator=g).tolist() for _ in range(n)]
               for _ in range(num_lists)]  # fmt: skip
    rewards = torch.rand(num_lists, n, generator=g)
    return Prefixes(ids, {"pixel_values": pixels}), answers, rewards


def step(model, layout: str, prefixes, answers, rewards) -> None:
    """One policy step as in training: batch, log-probs, loss, backward (reference: constant 0)."""
    if layout == "pairs":  # best vs each other answer, one 2-answer list per pair
        best = rewards.argmax(1).tolist()
        pairs, select, pair_rewards = [], [], []
        for b, lst in enumerate(answers):
            for k in range(len(lst)):
                if k != best[b]:
                    pairs.append([lst[best[b]], lst[k]])
                    select.append(b)
                    pair_rewards.append([1.0, 0.0])
        lp = answer_logps(model, build_list_batch(prefixes, pairs, PAD, select=select)).sum
        loss = dpo_loss(lp, torch.zeros_like(lp), torch.tensor(pair_rewards), beta=0.1).mean()
    else:
        if layout == "naive":
            lp = answer_logps(model, build_list_batch(prefixes, answers, PAD)).sum
        else:
            lp = packed_answer_logps(model, pack_lists(prefixes, answers, PAD)).sum
        loss = perpo_loss(lp, torch.zeros_like(lp), rewards, beta=0.1, gamma=1.0).mean()
    loss.backward()
    model.zero_grad(set_to_none=True)


def tokens_per_list(layout: str, n: int) -> int:
    p, a = IMAGE_TOKENS + PROMPT_TOKENS, ANSWER_TOKENS
    return {"naive": n * (p + a), "shared": p + n * a, "pairs": 2 * (n - 1) * (p + a)}[layout]


def images_per_list(layout: str, n: int) -> int:
    return {"naive": n, "shared": 1, "pairs": 2 * (n - 1)}[layout]


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.matmul(a, b)
    best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    return 2 * size**3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def step_flops(model, layout, data) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(model, layout, *data)
    return counter.get_total_flops()


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def memory_child(n: int, layout: str, num_lists: int) -> None:
    """Print the resident-set rise (MiB) of one first step in this fresh process."""
    model = build()
    data = make_lists(model, num_lists, n)
    gc.collect()
    before = rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark VmHWM
    step(model, layout, *data)
    print((rss_kib("VmHWM") - before) / 1024)


def peak_memory(n: int, layout: str, num_lists: int) -> float:
    cmd = [sys.executable, __file__, "--memory-child", str(n), layout, "--lists", str(num_lists)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 8, 20])
    parser.add_argument("--lists", type=int, default=2, help="lists per step (B)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    parser.add_argument("--memory-child", nargs=2, metavar=("N", "LAYOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(int(args.memory_child[0]), args.memory_child[1], args.lists)

    torch.manual_seed(0)
    model = build(args.attn)
    params = sum(p.numel() for p in model.parameters())
    peak = matmul_peak()
    p = IMAGE_TOKENS + PROMPT_TOKENS
    rows, notes = [], []
    for n in args.sizes:
        data = make_lists(model, args.lists, n)
        times = {layout: [] for layout in LAYOUTS}
        for layout in LAYOUTS:  # warm-up
            step(model, layout, *data)
        for r in range(args.repeats):
            for layout in LAYOUTS[r % 3:] + LAYOUTS[: r % 3]:  # rotate the order
                times[layout].append(_timed(lambda: step(model, layout, *data)))
        med = {k: statistics.median(v) for k, v in times.items()}
        flops = step_flops(model, "shared", data)
        naive_flops = step_flops(model, "naive", data)
        for layout in LAYOUTS:
            bound = tokens_per_list(layout, n) / tokens_per_list("shared", n)
            speed = med[layout] / med["shared"]
            mem = peak_memory(n, layout, args.lists)
            rows.append(
                f"| {n} | {layout} | {tokens_per_list(layout, n)} | {images_per_list(layout, n)} "
                f"| {1000 * med[layout]:.0f} | {args.lists / med[layout]:.2f} "
                + ("| - | - | - " if layout == "shared" else f"| {speed:.2f}x | {bound:.2f}x | {speed / bound:.2f} ")
                + f"| {mem:.0f} |"
            )
            print(rows[-1], flush=True)
        notes.append(
            f"| {n} | {flops / 1e9:.2f} | {flops / med['shared'] / 1e9:.1f} | {100 * flops / med['shared'] / peak:.0f}% "
            f"| {naive_flops / 1e9:.2f} | {naive_flops / med['naive'] / 1e9:.1f} |"
        )
        print(notes[-1], flush=True)
    peak_end = matmul_peak()

    text = "\n".join([
        "# List scoring benchmark: naive vs shared prefix vs pair expansion",
        "",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}; "
        f"{torch.get_num_threads()} threads; {platform.processor() or platform.machine()}, {_cpu_name()}",
        f"- model: tiny LLaVA, {params / 1e6:.1f} M parameters (CLIP {IMAGE_SIZE} px / patch {PATCH}, "
        f"Llama hidden 256 x 4 layers), fp32, attention `{args.attn}`, train mode",
        f"- shape: P = {IMAGE_TOKENS} image + {PROMPT_TOKENS} prompt = {p} prefix tokens, A = {ANSWER_TOKENS}; "
        f"B = {args.lists} lists per step; median of {args.repeats} interleaved steps (fwd + loss + bwd, batch building included)",
        "- speedup = step time of the layout / step time of shared; bound = LM-token ratio "
        "(naive N(P+A)/(P+NA), pairs 2(N-1)(P+A)/(P+NA)); peak = RSS rise of one step in a fresh process",
        "",
        "| N | layout | LM tokens/list | images/list | ms/step | lists/s | shared speedup | token bound | speedup/bound | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Achieved FLOP/s (FlopCounterMode counts, fwd+bwd) against the measured fp32 matmul peak "
        f"({peak / 1e9:.1f} GFLOP/s, 2048^2 torch.matmul; {peak_end / 1e9:.1f} at the end of the run; "
        f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}):",
        "",
        "| N | shared GFLOP/step | shared GFLOP/s | % of matmul peak | naive GFLOP/step | naive GFLOP/s |",
        "|---|---|---|---|---|---|",
        *notes,
        "",
    ])
    Path(args.out).write_text(text)
    print(text)


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    main()
