"""CPU benchmark: trl's DPOTrainer vs perpo on the same lists, same model, same precision.

One process, one model architecture at a time, four fp32 copies of the same random-init weights:
trl's policy + reference (handed to ``trl.DPOTrainer``) and perpo's policy + reference
(``perpo.training.reference.FrozenCopyReference``). Both sides get the same lists: one image, one
chat-formatted grounding prompt, N answers of exactly A tokens each (random lowercase letters and
digits: one token per character in perpo's tokenizer, checked) and N distinct random rewards.

What is timed, per list (one list per step, batch building from the raw image and text included):

- trl: ``DPOTrainer.data_collator`` (``DataCollatorForVisionPreference``: the processor on the image
  and texts, chosen/rejected rows) -> ``DPOTrainer._prepare_inputs`` -> ``DPOTrainer.training_step``
  (policy forward with trl's fused LM head, reference forward, sigmoid DPO loss, trl's metrics,
  ``accelerator.backward``). That is everything ``Trainer.train`` runs for one micro-batch except the
  optimizer step, which neither side includes. trl learns from pairs, so a list of N answers
  becomes pairs, chosen = the higher reward:
    * ``trl best-worst``: 1 pair (what DPO trains on);
    * ``trl adjacent``: the N-1 pairs of neighbours in reward order;
    * ``trl all pairs``: the N(N-1)/2 pairs (what PerPO's loss sums over).
  Pairs go through in micro-batches of at most ``--micro-batch`` pairs (gradient accumulation, as a
  trl user would set it); where a list needs more than ``--timed-batches`` micro-batches, that many
  full micro-batches are timed and the list's time is their median x (pairs / micro-batch): every
  micro-batch has the same shape (fixed answer length), so the cost is linear in the pairs.
- perpo: ``perpo.listbatch.naive.encode_prefixes`` -> ``perpo.listbatch.packed.build_batch``
  (shared prefix: one row per list) -> ``batch_logps`` (policy, grad) -> the reference's ``logps``
  -> ``perpo.losses.list_loss`` -> backward: the scoring path of ``PerPOModule.training_step``.
    * ``perpo loss=dpo``: the pipeline's loss=dpo (the whole list is scored, best vs worst taken);
    * ``perpo dpo 2-answer``: a list of the best and worst answers only (P + 2A tokens);
    * ``perpo loss=perpo``: the whole list, gamma 0.5, one pass.

Timing: median of ``--repeats`` rounds after one warm-up round; in every round each method runs
once, the order rotated each round (interleaved, same process). The headline is the ratio of the
medians, measured side by side. Peak memory: ``torch.profiler`` with ``profile_memory=True`` around
one more step of each method; the running sum of the CPU allocator's allocation (+) and free (-)
events, its maximum = the peak rise over the step. The method runs once before, and its gradients are
zeroed but kept, so they are not counted (they are the same on both sides: trainable parameters x 4
bytes, given per model): what is counted is activations, logits and temporaries (torch tensors only,
not glibc/Python overhead; deterministic). For trl it is one micro-batch, which a list needing
several repeats.

Both sides: fp32 on CPU, the vision tower frozen (perpo's default ``vision_lr: 0``; the projector and
the language model train), dropout off, sdpa attention, no gradient checkpointing (trl's default
``gradient_checkpointing=True`` is turned off so that both do the same work), beta 0.1.

    python benchmarks/vs_trl.py            # writes benchmarks/vs_trl.md (needs: pip install -e .[bench])
"""

from __future__ import annotations

import argparse
import copy
import datetime
import logging
import os
import platform
import random
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

BETA, GAMMA = 0.1, 0.5
KEEP_GRADS = False  # True while profiling memory: gradients stay allocated (zeroed), so the peak is activations
MODELS = {
    # the embedded default: conf/model/tiny.yaml's arch (16 image tokens)
    "tiny": {"image_size": 64, "patch_size": 16, "vision_hidden": 64, "vision_layers": 2,
             "text_hidden": 128, "text_layers": 4, "heads": 4},
    # a mid-size random LLaVA of about 100 M parameters
    "mid": {"image_size": 64, "patch_size": 16, "vision_hidden": 256, "vision_layers": 4,
            "text_hidden": 1024, "text_layers": 9, "heads": 8},
}  # fmt: skip
EXPRESSION = "the red circle"
ALPHABET = string.ascii_lowercase + string.digits


# -- lists ---------------------------------------------------------------------------------------


def make_list(processor, n: int, answer_tokens: int, seed: int = 0):
    """(prompt text, PIL image, N answer texts, N rewards): the same for trl and perpo."""
    from PIL import Image

    rng = random.Random(seed)
    instruction = f"Please provide the bounding box coordinate of the region this sentence describes: {EXPRESSION}"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    size = processor.image_processor.crop_size["height"]
    image = Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(3 * size * size)))
    answers = ["".join(rng.choice(ALPHABET) for _ in range(answer_tokens)) for _ in range(n)]
    rewards = rng.sample(range(1000), n)  # distinct: every pair is strict
    tok = processor.tokenizer
    for a in answers:
        assert len(tok(a, add_special_tokens=False)["input_ids"]) == answer_tokens, a
    return prompt, image, answers, [r / 1000 for r in rewards]


def pairs_of(kind: str, rewards: list[float]) -> list[tuple[int, int]]:
    """(chosen, rejected) answer indices; chosen has the higher reward."""
    order = sorted(range(len(rewards)), key=lambda k: -rewards[k])
    if kind == "best-worst":
        return [(order[0], order[-1])]
    if kind == "adjacent":
        return [(order[k], order[k + 1]) for k in range(len(order) - 1)]
    if kind == "all pairs":
        return [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))]
    raise ValueError(kind)


# -- the two sides -------------------------------------------------------------------------------


def build(name: str):
    from perpo.models.tiny import build_model, build_processor

    arch = MODELS[name]
    processor = build_processor(image_size=arch["image_size"], patch_size=arch["patch_size"])
    model = build_model(processor.tokenizer, seed=0, **arch)
    model.set_attn_implementation("sdpa")
    model.model.vision_tower.requires_grad_(False)  # perpo's default (vision_lr: 0); same on both sides
    return model, processor


class Trl:
    """trl.DPOTrainer on an in-memory LLaVA; ``step(pairs)`` = collate + training_step per micro-batch."""

    def __init__(self, model, processor, example: dict, micro_batch: int, timed_batches: int):
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        self.tmp = tempfile.TemporaryDirectory()
        args = DPOConfig(
            output_dir=self.tmp.name, bf16=False, use_cpu=True, gradient_checkpointing=False,
            per_device_train_batch_size=micro_batch, max_length=None, beta=BETA, loss_type=["sigmoid"],
            report_to=[], logging_steps=10**9, save_strategy="no", disable_tqdm=True, seed=0,
        )  # fmt: skip
        ref = copy.deepcopy(model)
        self.trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list([example]),
                                  processing_class=processor)  # fmt: skip
        # Trainer.train sets this before its first step; training_step divides the loss by it
        self.trainer.current_gradient_accumulation_steps = 1
        self.micro_batch, self.timed_batches = micro_batch, timed_batches

    def batches(self, prompt, image, answers, pairs):
        for i in range(0, len(pairs), self.micro_batch):
            chunk = pairs[i : i + self.micro_batch]
            yield [{"image": image, "prompt": prompt, "chosen": answers[c], "rejected": answers[r]} for c, r in chunk]

    def micro_step(self, examples) -> None:
        t = self.trainer
        t.training_step(t.model, t._prepare_inputs(t.data_collator(examples)))

    def step(self, prompt, image, answers, pairs) -> float:
        """Seconds for the whole list (extrapolated past ``timed_batches`` full micro-batches)."""
        batches = list(self.batches(prompt, image, answers, pairs))
        if len(batches) <= self.timed_batches:
            t = time.perf_counter()
            for b in batches:
                self.micro_step(b)
            self.trainer.model.zero_grad(set_to_none=True)
            return time.perf_counter() - t
        times = []
        for b in batches[: self.timed_batches]:
            t = time.perf_counter()
            self.micro_step(b)
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        self.trainer.model.zero_grad(set_to_none=True)
        return statistics.median(times) * len(pairs) / self.micro_batch + time.perf_counter() - t

    def profile_step(self, prompt, image, answers, pairs) -> None:  # one micro-batch: its peak is the list's
        self.micro_step(next(self.batches(prompt, image, answers, pairs)))
        self.trainer.model.zero_grad(set_to_none=not KEEP_GRADS)

    def logps(self, prompt, image, answers, pairs) -> torch.Tensor:
        """trl's summed completion log-probs of the chosen answers (its own forward), for the check."""
        t = self.trainer
        inputs = t._prepare_inputs(t.data_collator(next(self.batches(prompt, image, answers, pairs))))
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        kwargs = {k: v for k, v in inputs.items() if k != "completion_mask"}
        with torch.no_grad():
            lp = t.model(**kwargs, labels=labels, fused_lm_head=True, use_cache=False).log_probs.sum(1)
        return lp[: len(pairs)]


class Perpo:
    """perpo's scoring path: encode_prefixes -> build_batch (shared) -> logps -> list loss -> backward."""

    def __init__(self, model, processor):
        from perpo.training.reference import FrozenCopyReference, disable_dropout

        disable_dropout(model)
        self.policy, self.processor = model.train(), processor
        self.reference = FrozenCopyReference(model)
        self.pad = processor.tokenizer.pad_token_id

    def ids(self, answers):
        return [self.processor.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers]

    def step(self, prompt, image, answers, rewards, loss: str) -> float:
        from perpo.listbatch.naive import encode_prefixes
        from perpo.listbatch.packed import batch_logps, build_batch
        from perpo.losses import list_loss

        t = time.perf_counter()
        prefixes = encode_prefixes(self.processor, [prompt], [image])
        batch = build_batch(prefixes, [self.ids(answers)], self.pad, layout="shared")
        policy_lp = batch_logps(self.policy, batch)
        ref_lp = self.reference.logps(batch)
        fn = list_loss(loss, beta=BETA, gamma=GAMMA)
        fn(policy_lp.sum, ref_lp.sum, torch.tensor([rewards])).sum().backward()
        self.policy.zero_grad(set_to_none=not KEEP_GRADS)
        return time.perf_counter() - t

    def logps(self, prompt, image, answers) -> torch.Tensor:
        from perpo.listbatch.naive import encode_prefixes
        from perpo.listbatch.packed import score_lists

        with torch.no_grad():
            prefixes = encode_prefixes(self.processor, [prompt], [image])
            return score_lists(self.policy, prefixes, [self.ids(answers)], self.pad).sum[0]


# -- measuring -----------------------------------------------------------------------------------


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


METHODS = ("trl best-worst", "trl adjacent", "trl all pairs", "perpo loss=dpo", "perpo dpo 2-answer", "perpo loss=perpo")


def run_model(name: str, sizes, answer_tokens: int, repeats: int, micro_batch: int, timed_batches: int) -> dict:
    torch.manual_seed(0)
    model, processor = build(name)
    params = sum(p.numel() for p in model.parameters())
    perpo = Perpo(copy.deepcopy(model), processor)  # copied before trl patches its model's forward
    prompt, image, answers, rewards = make_list(processor, max(sizes), answer_tokens)
    trl = Trl(model, processor, {"image": image, "prompt": prompt, "chosen": answers[0], "rejected": answers[1]},
              micro_batch, timed_batches)  # fmt: skip
    prefix = len(processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"][0])

    # same numbers: trl's chosen log-probs (its collator + fused head) vs perpo's packed scoring
    pairs = pairs_of("adjacent", rewards[:4])
    lp_trl = trl.logps(prompt, image, answers[:4], pairs)
    lp_perpo = perpo.logps(prompt, image, answers[:4])[[c for c, _ in pairs]]
    check = float((lp_trl - lp_perpo).abs().max())

    rows = []
    for n in sizes:
        lst = (prompt, image, answers[:n], rewards[:n])
        steps = {
            f"trl {kind}": (lambda kind=kind: trl.step(*lst[:3], pairs_of(kind, lst[3])))
            for kind in ("best-worst", "adjacent", "all pairs")
        }
        best, worst = max(range(n), key=lst[3].__getitem__), min(range(n), key=lst[3].__getitem__)
        steps["perpo loss=dpo"] = lambda: perpo.step(*lst, "dpo")
        steps["perpo dpo 2-answer"] = lambda: perpo.step(prompt, image, [lst[2][best], lst[2][worst]],
                                                         [lst[3][best], lst[3][worst]], "dpo")  # fmt: skip
        steps["perpo loss=perpo"] = lambda: perpo.step(*lst, "perpo")
        for fn in steps.values():  # warm-up
            fn()
        times = {m: [] for m in METHODS}
        for r in range(repeats):
            order = METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]
            for m in order:
                times[m].append(steps[m]())
        med = {m: statistics.median(v) for m, v in times.items()}
        peaks = {}
        for m in METHODS:
            if m.startswith("trl"):
                kind = m[4:]
                peaks[m] = torch_peak(lambda: trl.profile_step(*lst[:3], pairs_of(kind, lst[3])))
            else:
                peaks[m] = torch_peak(steps[m])
        for m in METHODS:
            pairs = len(pairs_of(m[4:], lst[3])) if m.startswith("trl") else None
            rows.append({"n": n, "method": m, "pairs": pairs, "seconds": med[m], "peak": peaks[m],
                         "tokens": tokens(m, n, prefix, answer_tokens), "images": images(m, n),
                         "extrapolated": pairs is not None and -(-pairs // micro_batch) > timed_batches})  # fmt: skip
            print(name, rows[-1], flush=True)
    trainable = sum(p.numel() for p in perpo.policy.parameters() if p.requires_grad)
    return {"name": name, "params": params, "trainable": trainable, "prefix": prefix, "rows": rows, "check": check, "arch": MODELS[name]}


def tokens(method: str, n: int, p: int, a: int) -> int:
    """LM tokens run per list (policy forward; the reference forward runs the same again)."""
    if method.startswith("trl"):
        return 2 * len(pairs_of(method[4:], list(range(n)))) * (p + a)
    if method == "perpo dpo 2-answer":
        return p + 2 * a
    return p + n * a


def images(method: str, n: int) -> int:
    return 2 * len(pairs_of(method[4:], list(range(n)))) if method.startswith("trl") else 1


# -- report --------------------------------------------------------------------------------------


def report(results: list[dict], args, elapsed: float) -> str:
    import transformers
    import trl

    lines = [
        "# trl DPOTrainer vs perpo on the same lists (CPU, fp32)",
        "",
        f"- command: `{' '.join(['python', *sys.argv])}`",
        (f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}; "
         f"transformers {transformers.__version__}; trl {trl.__version__}; {torch.get_num_threads()} torch threads; "
         f"{_cpu_name()}; whole benchmark {elapsed:.0f} s; load average at the end "
         f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"),
        (f"- one list = one image + one grounding prompt + N answers of A = {args.answer_tokens} tokens "
         "(same texts, image and rewards on both sides); one list per step; fp32; vision tower frozen on both "
         "sides; no gradient checkpointing; beta 0.1 (perpo gamma 0.5)"),
        ("- trl = `DPOTrainer.data_collator` + `_prepare_inputs` + `DPOTrainer.training_step` (policy and reference "
         "forwards with trl's fused LM head, sigmoid DPO loss, metrics, backward) per micro-batch of at most "
         f"{args.micro_batch} pairs; the optimizer step is left out on both sides. DPOTrainer drives the LLaVA with "
         "images on CPU here; only `Trainer.train`'s loop is bypassed (its dataloader, optimizer and scheduler)."),
        ("- perpo = `encode_prefixes` + `build_batch(layout=shared)` + `batch_logps` (policy) + "
         "`FrozenCopyReference.logps` + `list_loss` + backward (the scoring path of `PerPOModule.training_step`). "
         "`perpo loss=dpo` is the pipeline's loss=dpo: it scores the whole list (P + N A tokens) and takes best vs "
         "worst, so past small N it runs more tokens than trl's one pair (token bound < 1); `perpo dpo 2-answer` "
         "packs only the best and worst answers (P + 2A): the like-for-like comparison with trl's pair"),
        (f"- ms/list: median of {args.repeats} interleaved rounds (order rotated) after 1 warm-up round; "
         f"where a list needs more than {args.timed_batches} micro-batches (marked ~), {args.timed_batches} are "
         "timed and scaled to the list's pairs (all micro-batches have one shape)"),
        ("- peak MiB: torch.profiler (`profile_memory=True`) over one step; the maximum of the running sum of the CPU "
         "allocator's allocation/free events = torch tensors allocated during the step (activations, logits, "
         "temporaries). Gradients are NOT counted: each method runs once first and its gradients are zeroed but kept "
         "(they are the same on both sides, given per model). Not the weights, not glibc/Python overhead. trl: one "
         "micro-batch (a list needing several repeats it)"),
        (f"- other jobs seen during the run (`pgrep -af '{WATCH}'`, every {Watch.PERIOD} s): "
         + ("none" if not args.seen else "SEEN, timings may be disturbed: " + "; ".join(sorted(args.seen)))),
        "- LM tokens/list: tokens through the policy forward per list (the reference forward repeats them): "
        "trl 2 x pairs x (P + A), perpo P + N A (2-answer: P + 2A); token bound = trl tokens / perpo tokens",
        "",
        "## Headline ratios (trl time / perpo time, measured side by side; > 1: perpo faster)",
        "",
        "| model | N | trl best-worst / perpo loss=dpo | trl best-worst / perpo dpo 2-answer "
        "| trl adjacent / perpo loss=perpo | trl all pairs / perpo loss=perpo | memory: trl all pairs (1 micro-batch) / perpo loss=perpo |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        by = {(r["n"], r["method"]): r for r in res["rows"]}
        for n in args.sizes:
            def ratio(a, b, key="seconds"):
                x, y = by[n, a], by[n, b]
                bound = x["tokens"] / y["tokens"]
                return f"{x[key] / y[key]:.2f}x" + (f" (tokens {bound:.2f}x)" if key == "seconds" else "")
            lines.append(
                f"| ratio {res['name']} | {n} | {ratio('trl best-worst', 'perpo loss=dpo')} "
                f"| {ratio('trl best-worst', 'perpo dpo 2-answer')} | {ratio('trl adjacent', 'perpo loss=perpo')} "
                f"| {ratio('trl all pairs', 'perpo loss=perpo')} | {ratio('trl all pairs', 'perpo loss=perpo', 'peak')} |"
            )
    for res in results:
        arch = ", ".join(f"{k} {v}" for k, v in res["arch"].items())
        lines += [
            "",
            (f"## {res['name']}: {res['params'] / 1e6:.1f} M parameters ({arch}); P = {res['prefix']} prefix tokens; "
             f"{res['trainable'] / 1e6:.1f} M trainable (gradients {4 * res['trainable'] / 2**20:.0f} MiB, not in the peaks)"),
            "",
            (f"Check: trl's summed log-probs of the chosen answers (its collator + fused head) vs perpo's "
             f"shared-prefix scoring of the same answers: max |difference| = {res['check']:.2e} nats."),
            "",
            "| N | method | pairs | images/list | LM tokens/list | ms/list | lists/s | torch peak MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:
            lines.append(
                f"| {r['n']} | {r['method']} | {r['pairs'] if r['pairs'] is not None else '-'} | {r['images']} "
                f"| {r['tokens']} | {'~' if r['extrapolated'] else ''}{1000 * r['seconds']:.0f} "
                f"| {1 / r['seconds']:.2f} | {r['peak']:.1f} |"
            )
    lines.append("")
    return "\n".join(lines)


WATCH = "train.py|evaluate.py|sample.py|benchmarks/|pytest"


class Watch(threading.Thread):
    """Polls ``pgrep -af WATCH`` (other than this process): other CPU jobs disturb the timings."""

    PERIOD = 5

    def __init__(self, own_pid: int):
        super().__init__(daemon=True)
        self.own, self.seen, self.done = {str(own_pid), str(os.getppid())}, set(), threading.Event()
        self.start()

    def run(self):
        while not self.done.is_set():
            out = subprocess.run(["pgrep", "-af", WATCH], capture_output=True, text=True, check=False).stdout
            for line in out.splitlines():
                pid, _, cmd = line.partition(" ")
                if pid not in self.own and "python" in cmd.split(" ")[0]:  # running python, not a wrapper
                    self.seen.add(cmd[:80])
            self.done.wait(self.PERIOD)

    def stop(self):
        self.done.set()
        self.join()


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 8, 20])
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up")
    parser.add_argument("--micro-batch", type=int, default=8, help="trl: pairs per micro-batch")
    parser.add_argument("--timed-batches", type=int, default=2, help="trl: micro-batches timed per list at most")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    start = time.perf_counter()
    watch = Watch(os.getpid())
    results = [run_model(m, args.sizes, args.answer_tokens, args.repeats, args.micro_batch, args.timed_batches)
               for m in args.models]  # fmt: skip
    watch.stop()
    args.seen = watch.seen
    text = report(results, args, time.perf_counter() - start)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
