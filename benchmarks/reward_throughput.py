"""OCR reward and OCR metric throughput on page-length texts (~3,000 characters), one core.

    OMP_NUM_THREADS=1 python benchmarks/reward_throughput.py     # ~1 min; writes benchmarks/reward_throughput.md

Pages are random English-like words; each answer is its page with ~10% of the words replaced,
dropped or duplicated (a realistic dense-OCR answer). Measured in the same run, pinned to one
CPU core:

- the ``edit`` reward (1 - normalized edit distance) with the pure-Python O(n*m) Levenshtein
  perpo used before (commit 0a8b2c4, kept below for this comparison) and with rapidfuzz (now);
- the paper's OCR metrics of one page as Nougat computes them
  (:func:`perpo.evaluation.metrics.nougat_page_metrics`: edit distance, word-set P/R/F1, nltk
  BLEU and METEOR without WordNet), with rapidfuzz, and with the old Levenshtein swapped in;
- reward + metric together (what an evaluation that also scores its samples pays per answer).

Target: >= 1,000 answers/s for the reward.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import platform  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perpo import answers  # noqa: E402
from perpo.atomic import write_text_atomic  # noqa: E402
from perpo.evaluation import metrics  # noqa: E402
from perpo.rewards.registry import get_reward  # noqa: E402

PAGE_CHARS = 3000
TARGET = 1000.0


def old_edit_distance(a: str, b: str) -> int:
    """perpo's Levenshtein before rapidfuzz: prefix / suffix stripped, then a two-row DP."""
    start, limit = 0, min(len(a), len(b))
    while start < limit and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a, end_b = end_a - 1, end_b - 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def make_pages(n: int, seed: int = 0) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 10))) for _ in range(2000)]
    pairs = []
    for _ in range(n):
        words: list[str] = []
        while sum(len(w) + 1 for w in words) < PAGE_CHARS:
            words.append(rng.choice(vocab))
        gt = " ".join(words)[:PAGE_CHARS]
        pred_words = []
        for w in gt.split():
            r = rng.random()
            if r < 0.04:
                pred_words.append(rng.choice(vocab))  # misread
            elif r < 0.07:
                continue  # dropped
            elif r < 0.10:
                pred_words += [w, w]  # repeated
            else:
                pred_words.append(w)
        pairs.append((" ".join(pred_words), {"target": gt}))
    return pairs


def rate(fn, pairs, min_seconds: float = 2.0, max_items: int = 100_000) -> tuple[float, int]:
    """answers/s of ``fn(pred, record)`` over ``pairs`` (cycled), at least ``min_seconds``."""
    done, start = 0, time.perf_counter()
    while True:
        pred, record = pairs[done % len(pairs)]
        fn(pred, record)
        done += 1
        elapsed = time.perf_counter() - start
        if (elapsed >= min_seconds and done >= 3) or done >= max_items:
            return done / elapsed, done


def main() -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    pairs = make_pages(200)
    mean_len = sum(len(r["target"]) for _, r in pairs) / len(pairs)
    mean_ned = sum(answers.normalized_edit_distance(p, r["target"]) for p, r in pairs) / len(pairs)

    edit = get_reward("edit")

    def old_reward(pred, record):
        a, b = pred.strip(), str(record["target"]).strip()
        return 1.0 - old_edit_distance(a, b) / max(len(a), len(b), 1)

    def new_metric(pred, record):
        return metrics.nougat_page_metrics(pred, record["target"], wordnet=None)

    def old_lev_metric(pred, record):
        real = metrics.edit_distance
        metrics.edit_distance = old_edit_distance
        try:
            return metrics.nougat_page_metrics(pred, record["target"], wordnet=None)
        finally:
            metrics.edit_distance = real

    def both(pred, record):
        edit(pred, record)
        new_metric(pred, record)

    # the two rewards agree on these pages (the values are tested on random unicode strings too)
    for pred, record in pairs[:3]:
        assert abs(old_reward(pred, record) - edit(pred, record)) < 1e-12

    rows = []
    for name, fn, seconds in (
        ("edit reward, pure-Python Levenshtein (before)", old_reward, 5.0),
        ("edit reward, rapidfuzz (now)", edit, 3.0),
        ("Nougat OCR metrics of a page, pure-Python Levenshtein", old_lev_metric, 5.0),
        ("Nougat OCR metrics of a page, rapidfuzz (now)", new_metric, 3.0),
        ("reward + metrics (now)", both, 3.0),
    ):
        r, n = rate(fn, pairs, seconds)
        rows.append((name, r, n))
        print(f"{name}: {r:,.1f} answers/s ({n} answers)", flush=True)

    reward_now = rows[1][1]
    lines = [
        "# OCR reward and metric throughput on page-length texts",
        "",
        "`OMP_NUM_THREADS=1 python benchmarks/reward_throughput.py` (pinned to one CPU core; "
        f"python {platform.python_version()}, {platform.machine()}).",
        "",
        f"{len(pairs)} synthetic pages of {mean_len:,.0f} characters; each answer is its page with ~10% of the "
        f"words misread, dropped or repeated (mean normalized edit distance {mean_ned:.3f}). "
        "One answer = one (answer, page) pair scored.",
        "",
        "| what | answers/s | ms / answer | answers timed |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {r:,.1f} | {1000 / r:.3f} | {n} |" for name, r, n in rows),
        "",
        f"Reward speed-up: {rows[1][1] / rows[0][1]:,.0f}x; target >= {TARGET:,.0f} answers/s for the reward: "
        f"{'met' if reward_now >= TARGET else 'NOT met'} ({reward_now:,.0f}/s).",
        f"Reward + metrics: {rows[4][1]:,.0f}/s, {'above' if rows[4][1] >= TARGET else 'below'} {TARGET:,.0f}/s: "
        "the metrics' cost is nltk's sentence BLEU (~3.6 ms a page, Fractions) and METEOR (~2.3 ms, stems cached), "
        "kept because they define the paper's columns; they run once per evaluated page, not per sampled answer.",
        "",
    ]
    write_text_atomic(REPO / "benchmarks" / "reward_throughput.md", "\n".join(lines))
    print("wrote benchmarks/reward_throughput.md")


if __name__ == "__main__":
    main()
