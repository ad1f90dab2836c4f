"""CPU benchmark: one full PerPO training step for every tiny model family, and reference memory.

For every family of ``perpo.testing.tiny_families``: build the tiny random-init instance, write it
with ``save_pretrained`` to a temporary folder, load it back with ``perpo.models.loading.load_model``
(as the pipeline does: ``eos_token`` and ``attn_implementation`` from ``conf/model/<family>.yaml``,
fp32 on CPU), apply LoRA (r 8, alpha 16, ``apply_lora`` defaults otherwise: dropout 0.05, every
language-model linear layer, projector trained in full) and build the pipeline's ``PerPOModule``
(loss perpo, beta 0.1, gamma 0.5, N = 4, temperature 1, max_new_tokens from conf/task/grounding.yaml,
reference ``copy``). Then time ``module.training_step`` + ``loss.backward()`` + AdamW step on 4
grounding records from ``make_records`` -- no Lightning Trainer, the step code is the pipeline's:

    sample N answers (perpo.sampling.generation.generate) -> rewards -> keep lists with spread
    -> encode_prefixes / build_list_batch -> policy log-probs (grad) -> reference log-probs
    -> perpo_loss -> backward -> AdamW step

Rewards: the configured reward (``iou`` in the family's box format, unparsed -> 0) is computed on
every sampled answer (its cost is in the step time, its parse rate is reported), but random
weights almost never write a parseable box, so every reward would be 0, every list dropped and no
loss computed. The value handed to the loss is therefore replaced by U(0, 1) from a seeded
generator (min_margin 0): every list is kept and the loss and its backward are the real ones.

"sampling" is the time inside ``perpo.sampling.generation.generate`` (wrapped here); "scoring+backward" is
the rest of the step (rewards, batch building, policy and reference forwards, loss, backward,
AdamW); "of which reference" is the reference's ``logps``.

Peak memory, reference ``copy`` vs ``adapter_off``: one fresh subprocess per (model, variant). The
model is loaded and LoRA-wrapped, then the baseline resident set (VmRSS) is read and the
high-water mark (VmHWM) reset through /proc/self/clear_refs; the module (which builds the
reference) is made and one training step run. Reported: the resident rise of building the
reference, and the peak rise (VmHWM - baseline) over reference build + one step. This is the
whole process's resident memory (weights, activations, gradients, AdamW state, allocator caches,
Python objects), not only torch tensors. Done on the largest tiny family and on a mid-sized
random-init LLaVA (perpo.models.tiny: Llama hidden 1024 x 8 layers, CLIP hidden 256 x 4 layers),
where the copy's weights are large enough to see.

    python benchmarks/family_steps.py            # writes benchmarks/family_steps.md
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
LORA = {"r": 8, "alpha": 16}  # apply_lora defaults otherwise
N, PROMPTS, BETA, GAMMA, LR = 4, 4, 0.1, 0.5, 3e-4
MID = {"image_size": 64, "patch_size": 16, "vision_hidden": 256, "vision_layers": 4,
       "text_hidden": 1024, "text_layers": 8, "heads": 8}  # fmt: skip

warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached: logging is a no-op


# -- building ------------------------------------------------------------------------------------


def model_conf(name: str):
    return OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")


def task_conf():
    return OmegaConf.load(ROOT / "conf" / "task" / "grounding.yaml").task


def load(name: str, folder: Path):
    """(policy, processor, box_format, base parameters): saved, loaded as the pipeline loads, LoRA."""
    from perpo.models.loading import load_model
    from perpo.models.lora import apply_lora

    if name == "llava_mid":
        from perpo.models.loading import atomic_save_pretrained
        from perpo.models.tiny import build_model, build_processor

        processor = build_processor(image_size=MID["image_size"], patch_size=MID["patch_size"])
        model = build_model(processor.tokenizer, seed=0, **MID)
        atomic_save_pretrained(model, processor, folder)
        del model, processor
        eos, attn, box_format = None, "sdpa", "norm2"
    else:
        from perpo.testing.tiny_families import save_tiny_family

        save_tiny_family(name, folder)
        cfg = model_conf(name)
        eos, attn, box_format = cfg.eos_token, cfg.attn_implementation, cfg.box_format
    model, processor = load_model(folder, dtype="float32", attn_implementation=attn, eos_token=eos)
    base_params = sum(p.numel() for p in model.parameters())
    return apply_lora(model, **LORA), processor, box_format, base_params


def records(n: int = PROMPTS, seed: int = 0):
    from perpo.data.synthetic import make_records

    ds = make_records("grounding", n, seed, **OmegaConf.to_container(task_conf().generator))
    return [ds[i] for i in range(len(ds))]


class TimedReward:
    """The pipeline's reward (iou, family box format) is computed; U(0, 1) goes to the loss."""

    def __init__(self, box_format: str, seed: int = 0):
        from perpo.rewards.registry import get_reward

        self.fn = partial(get_reward("iou"), box_format=box_format)
        self.rng = random.Random(seed)
        self.answers = self.parsed = 0

    def __call__(self, completion, record):
        self.answers += 1
        self.parsed += self.fn(completion, record) is not None
        return self.rng.random()


def make_module(policy, processor, box_format: str, reference: str, scoring: str = "naive"):
    from perpo.prompting import ChatFamily, TaskSpec
    from perpo.training.config import ListConfig
    from perpo.training.module import PerPOModule
    from perpo.models.parts import param_groups
    from perpo.sampling.generation import SamplingConfig

    t = task_conf()
    task = TaskSpec(t.name, t.instruction, int(t.max_new_tokens))
    reward = TimedReward(box_format)
    module = PerPOModule(
        policy, processor, ChatFamily(processor, box_format), task, reward,
        loss="perpo", beta=BETA, gamma=GAMMA, reference=reference, scoring=scoring,
        lists=ListConfig(listsize=N, min_margin=0.0, sampling=SamplingConfig(1.0, 1.0, task.max_new_tokens)),
    )  # fmt: skip
    module.train()  # as the Trainer does; the reference stays in eval mode
    module._timers = instrument(module)
    # perpo.training.module.PerPOModule.configure_optimizers without the scheduler (it needs a Trainer)
    optimizer = torch.optim.AdamW(param_groups(module.policy, lr=LR), lr=LR)
    return module, optimizer, reward


# -- the step ------------------------------------------------------------------------------------


class Timer:
    """Accumulates the wall time of calls to the wrapped function."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t


def instrument(module):
    """Wrap perpo.training.module.generate (the sampler the step calls) and the reference's logps."""
    import perpo.training.module

    if not isinstance(perpo.training.module.generate, Timer):
        perpo.training.module.generate = Timer(perpo.training.module.generate)
    module.reference.logps = Timer(module.reference.logps)
    return perpo.training.module.generate, module.reference.logps


def step(module, optimizer, batch, index: int) -> dict:
    sampler, ref = module._timers
    sampler.seconds = ref.seconds = 0.0
    t = time.perf_counter()
    loss = module.training_step(batch, index)
    if loss is None:
        raise RuntimeError("no list kept: the random rewards should always have spread")
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    total = time.perf_counter() - t
    return {"total": total, "sampling": sampler.seconds, "rest": total - sampler.seconds,
            "reference": ref.seconds, "loss": float(loss.detach())}  # fmt: skip


def answer_length(module, batch) -> float:
    """Mean sampled answer length (tokens) of one extra sampling call (not timed)."""
    from perpo.sampling.generation import generate

    prompts = [module.family.prompt_text(r, module.task) for r in batch]
    out = generate(module.policy, module.processor, prompts, [r["image"] for r in batch],
                   num_return_sequences=N, max_new_tokens=module.task.max_new_tokens)  # fmt: skip
    return statistics.mean(len(a) for row in out for a in row)


def unbanned_image_token(model, processor) -> int | None:
    """The model's image placeholder id when perpo.sampling.generation does not suppress it (else None).

    Gemma 3's processor names its begin-of-image token ``processor.image_token`` (``<start_of_image>``),
    not the placeholder the model counts (``<image_soft_token>``); a sampled placeholder makes the
    scoring forward fail ("Image features and image tokens do not match"). ``banned_token_ids(processor,
    model)`` -- called so by ``generate`` -- also bans the model config's ``image_token_id``, so this
    is None for every current family; the check stays so that a family whose placeholder escapes it is
    still flagged (``*`` in the report).
    """
    from perpo.sampling.generation import banned_token_ids

    config = model.config
    image_id = getattr(config, "image_token_id", None)
    if image_id is None:
        image_id = getattr(config, "image_token_index", None)
    return image_id if image_id is not None and image_id not in banned_token_ids(processor, model) else None


@contextmanager
def also_banned(token_id: int | None):
    """Benchmark-only workaround: add ``token_id`` to perpo.sampling.generation.banned_token_ids for a while."""
    import perpo.sampling.generation

    original = perpo.sampling.generation.banned_token_ids
    if token_id is not None:

        def banned_token_ids(processor, model=None):  # the signature of the function it replaces
            return sorted({*original(processor, model), token_id})

        perpo.sampling.generation.banned_token_ids = banned_token_ids
    try:
        yield
    finally:
        perpo.sampling.generation.banned_token_ids = original


def time_family(name: str, repeats: int, tmp: Path) -> dict:
    """Naive layout (perpo.listbatch.naive.build_list_batch) always; also the ``scoring=auto`` layout
    (perpo.listbatch.packed) where that resolves to shared, on a freshly loaded copy."""
    from perpo.listbatch.packed import resolve_layout

    torch.manual_seed(0)
    t = time.perf_counter()
    policy, processor, box_format, base_params = load(name, tmp / name)
    setup = time.perf_counter() - t
    unbanned = unbanned_image_token(policy, processor)
    auto = resolve_layout("auto", policy, processor)
    with also_banned(unbanned):
        module, reward, med, losses = time_steps(policy, processor, box_format, "naive", repeats)
        batch = records()
        prefix = statistics.mean(
            len(processor(images=[r["image"]], text=[module.family.prompt_text(r, module.task)],
                          return_tensors="pt")["input_ids"][0]) for r in batch
        )  # fmt: skip
        row = dict(name=name, params=base_params, setup=setup, prefix=prefix, unbanned=unbanned, auto=auto,
                   trainable=sum(p.numel() for p in module.policy.parameters() if p.requires_grad),
                   answer=answer_length(module, batch), parsed=reward.parsed / max(reward.answers, 1),
                   losses=losses, **med)  # fmt: skip
        del module, policy
        gc.collect()
        if auto == "shared":
            torch.manual_seed(0)
            policy, processor, box_format, _ = load(name, tmp / f"{name}-shared")
            _, _, shared, row["shared_losses"] = time_steps(policy, processor, box_format, "shared", repeats)
            row["shared"] = shared
            gc.collect()
    return row


def time_steps(policy, processor, box_format: str, scoring: str, repeats: int):
    """(module, reward, median seconds per part, losses) of 1 warm-up + ``repeats`` timed steps."""
    module, optimizer, reward = make_module(policy, processor, box_format, "copy", scoring)
    batch = records()
    step(module, optimizer, batch, 0)  # warm-up
    runs = [step(module, optimizer, batch, i + 1) for i in range(repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in ("total", "sampling", "rest", "reference")}
    return module, reward, med, [r["loss"] for r in runs]


# -- memory (fresh subprocess per variant) --------------------------------------------------------


def proc_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def torch_peak(prof) -> tuple[float, float]:
    """(peak, final) MiB of the running sum of CPU allocator events (allocations +, frees -)."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak / 2**20, current / 2**20


def memory_child(name: str, reference: str, mode: str) -> None:
    """One (model, reference) in this fresh process; mode ``rss`` or ``torch`` (profiler)."""
    import perpo.evaluation.metrics
    import perpo.training.module

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        policy, processor, box_format, base_params = load(name, Path(tmp) / name)
    batch = records()
    perpo.evaluation.metrics.TaskMetrics("grounding", box_format=box_format)  # its imports are not counted
    shapes = []
    original = perpo.training.module.build_batch
    perpo.training.module.build_batch = lambda *a, **k: shapes.append((b := original(*a, **k)).input_ids.shape) or b
    unbanned = unbanned_image_token(policy, processor)
    # load_model's weights are file-backed (safetensors mmap) and only become resident when read:
    # read them all now so that the baseline holds the policy's weights.
    with torch.no_grad():
        sum(float(p.sum()) for p in policy.parameters())
    gc.collect()
    out = {"params": base_params}
    if mode == "rss":
        base = proc_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark VmHWM
        module, optimizer, _ = make_module(policy, processor, box_format, reference)
        gc.collect()
        out.update(base=base / 1024, reference=(proc_kib("VmRSS") - base) / 1024)
        t = time.perf_counter()
        with also_banned(unbanned):
            step(module, optimizer, batch, 0)
        out.update(seconds=time.perf_counter() - t, peak=(proc_kib("VmHWM") - base) / 1024)
    else:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            module, optimizer, _ = make_module(policy, processor, box_format, reference)
            with also_banned(unbanned):
                step(module, optimizer, batch, 0)
        out["peak"], out["final"] = torch_peak(prof)
    out["batch"] = list(shapes[0])
    print(json.dumps(out))


def peak_memory(name: str, reference: str, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", name, reference, mode]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


class Watch(threading.Thread):
    """Polls ``pgrep -f pattern`` in the background: other CPU jobs make the timings meaningless."""

    PERIOD = 5

    def __init__(self, pattern: str):
        super().__init__(daemon=True)
        self.pattern, self.seen, self.done = pattern, set(), threading.Event()
        self.start()

    def run(self):
        while not self.done.is_set():
            out = subprocess.run(["pgrep", "-af", self.pattern], capture_output=True, text=True, check=False).stdout
            self.seen.update(line.split(None, 1)[-1][:80] for line in out.splitlines() if line.strip())
            self.done.wait(self.PERIOD)

    def stop(self):
        self.done.set()
        self.join()


# -- main ------------------------------------------------------------------------------------------


def main() -> None:
    from perpo.testing.tiny_families import TINY_BUILDERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(TINY_BUILDERS))
    parser.add_argument("--repeats", type=int, default=5, help="timed steps after one warm-up")
    parser.add_argument("--no-mid", action="store_true", help="skip the mid-sized LLaVA memory run")
    parser.add_argument("--rss-runs", type=int, default=3, help="RSS measurements per (model, reference)")
    parser.add_argument("--watch", default="train.py|list_scoring.py", help="pgrep -f pattern of jobs to report")
    parser.add_argument("--note", default="", help="a line added to the report")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".md")))
    parser.add_argument("--memory-child", nargs=3, metavar=("MODEL", "REFERENCE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(*args.memory_child)

    import transformers

    start = time.perf_counter()
    watch = Watch(args.watch)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.families:
            r = time_family(name, args.repeats, Path(tmp))
            rows.append(r)
            print(f"{name}: {r['total']:.3f} s/step (sampling {r['sampling']:.3f}, rest {r['rest']:.3f}), "
                  f"{r['params'] / 1e3:.0f} k params, losses {[round(x, 3) for x in r['losses']]}", flush=True)  # fmt: skip
    table = [
        f"| {r['name']}{' *' if r['unbanned'] is not None else ''} | {r['params'] / 1e3:.0f} k | {r['trainable'] / 1e3:.1f} k ({100 * r['trainable'] / r['params']:.1f}%) "
        f"| {r['prefix']:.0f} | {r['answer']:.1f} | {r['total']:.3f} | {r['sampling']:.3f} | {r['rest']:.3f} "
        f"| {r['reference']:.3f} | {_auto_cell(r)} | {100 * r['parsed']:.0f}% |"
        for r in rows
    ]

    largest = max(rows, key=lambda r: r["params"])["name"]
    mem_models = [largest] + ([] if args.no_mid else ["llava_mid"])
    mem_rows, torch_peaks = [], {}
    for model in mem_models:
        for reference in ("copy", "adapter_off"):
            tp = peak_memory(model, reference, "torch")
            torch_peaks[model, reference] = tp
            runs = [peak_memory(model, reference, "rss") for _ in range(args.rss_runs)]
            rss = {k: statistics.median(r[k] for r in runs) for k in ("base", "reference", "peak", "seconds")}
            lo, hi = min(r["peak"] for r in runs), max(r["peak"] for r in runs)
            label = "mid LLaVA" if model == "llava_mid" else f"{model} (largest tiny)"
            mem_rows.append(
                f"| {label} | {tp['params'] / 1e6:.2f} M | {reference} | {'x'.join(map(str, tp['batch']))} "
                f"| **{tp['peak']:.0f}** | {tp['final']:.0f} | {rss['base']:.0f} | {rss['reference']:.0f} "
                f"| {rss['peak']:.0f} ({lo:.0f}-{hi:.0f}) | {rss['seconds']:.2f} |"
            )
            print(mem_rows[-1], flush=True)
    elapsed = time.perf_counter() - start
    watch.stop()

    t = task_conf()
    text = "\n".join([
        "# One PerPO training step per model family (tiny random-init instances, CPU)",
        "",
        f"- command: `{' '.join(['python', *sys.argv])}`",
        (f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; torch {torch.__version__}; "
        f"transformers {transformers.__version__}; {torch.get_num_threads()} torch threads; "
        f"{_cpu_name()}; whole benchmark {elapsed:.0f} s"),
        *([f"- note: {args.note}"] if args.note else []),
        (f"- other jobs (`pgrep -f '{args.watch}'`, polled every {Watch.PERIOD} s during the run): "
         + ("none seen" if not watch.seen else "SEEN, timings are not clean: " + "; ".join(sorted(watch.seen)))),
        (f"- each family: `save_tiny_family` -> `load_model` (fp32, eos_token / attention from conf/model) -> "
        f"`apply_lora` (r {LORA['r']}, alpha {LORA['alpha']}, defaults otherwise) -> `PerPOModule` "
        f"(perpo, beta {BETA}, gamma {GAMMA}, reference copy); one step = `module.training_step` + backward + "
        f"AdamW (lr {LR}), on {PROMPTS} grounding records (make_records, conf/task/grounding.yaml generator) "
        f"with N = {N} samples each at temperature 1, max_new_tokens {t.max_new_tokens}"),
        ("- rewards: `iou` in the family's box format is computed on every answer (in the step time; parse rate "
        "below), but the value given to the loss is U(0, 1) from a seeded generator: random weights write no "
        "parseable box, so real rewards would all be 0, every list dropped and no loss or backward run"),
        (f"- median of {args.repeats} steps after 1 warm-up step; sampling = inside `perpo.sampling.generation.generate`; "
        "scoring+backward = the rest (rewards, batch, policy + reference forwards, loss, backward, AdamW); "
        "reference = the reference's `logps` (part of scoring+backward)"),
        ("- layout: the timed columns use the naive list batch (`scoring=naive`: perpo.listbatch.naive.build_list_batch, "
        "the prefix repeated in each of the N rows); the scoring=auto column is the pipeline's default layout: "
        "shared prefix (perpo.listbatch.packed, one packed row per list) where the family supports it, timed on a "
        "fresh load of the same instance, else naive (Qwen-VL: M-RoPE / mm_token_type_ids; Gemma 3: "
        "token_type_ids) and not timed again"),
        ("- params = the loaded model before LoRA; trainable = LoRA matrices + the projector "
        "(a `modules_to_save` copy)"),
        "",
        ("| family | params | trainable (LoRA r 8) | prefix tokens | answer tokens | s/step | sampling s | "
        "scoring+backward s | of which reference s | scoring=auto: s/step (scoring+backward s) | answers parsed |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *table,
        "",
        *([("\\* sampling can emit this family's image placeholder (the model config's image token id is not "
           "among perpo.sampling.generation.banned_token_ids(processor, model)); a sampled placeholder makes the "
           "scoring forward raise \"Image features and image tokens do not match\". For these rows the benchmark "
           "also bans that id (a benchmark-only patch of perpo.sampling.generation.banned_token_ids)."), ""]
          if any(r["unbanned"] is not None for r in rows) else []),
        "## Peak memory: reference `copy` vs `adapter_off`",
        "",
        ("Each measurement runs in a fresh subprocess: load + LoRA (the policy's weights read once so they "
        "are resident), then build the PerPOModule -- which builds the reference -- and run one (the first) "
        "training step. Two measures:"),
        "",
        ("- torch: `torch.profiler` with `profile_memory=True` around reference build + step; the running sum "
        "of the CPU allocator's allocation (+) and free (-) events, in time order. peak = its maximum, "
        "retained = its value after the step (reference copy, AdamW state, ...). Counts torch tensors "
        "only (not the policy's weights, allocated before), and is deterministic."),
        (f"- RSS: baseline = VmRSS after load; VmHWM reset through /proc/self/clear_refs; reference = VmRSS "
        "rise from building the reference; peak rise = VmHWM - baseline over reference build + step. Whole "
        "process (tensors, glibc heap retention and fragmentation, oneDNN scratch, Python objects): larger "
        f"than the torch peak and it varies from run to run with identical work, so the median of "
        f"{args.rss_runs} runs is shown with its range."),
        "",
        (f"Mid LLaVA = `perpo.models.tiny.build_model` with Llama hidden {MID['text_hidden']} x "
        f"{MID['text_layers']} layers, CLIP hidden {MID['vision_hidden']} x {MID['vision_layers']} layers, "
        f"{MID['heads']} heads, {MID['image_size']} px / patch {MID['patch_size']}, fp32, saved and loaded with "
        "load_model; same step (N 4, 4 prompts, LoRA r 8, scoring=naive). batch = rows x tokens of the list batch."),
        "",
        ("| model | params | reference | batch | torch peak MiB | torch retained MiB | baseline RSS MiB "
        "| RSS reference MiB | RSS peak rise MiB | first step s |"),
        "|---|---|---|---|---|---|---|---|---|---|",
        *mem_rows,
        "",
        *[f"{model}: torch peak copy - adapter_off = "
          f"{torch_peaks[model, 'copy']['peak'] - torch_peaks[model, 'adapter_off']['peak']:.1f} MiB; "
          f"the model's fp32 weights are {4 * torch_peaks[model, 'copy']['params'] / 2**20:.1f} MiB."
          for model in mem_models],
        "",
    ])
    Path(args.out).write_text(text)
    print(text)


def _auto_cell(row: dict) -> str:
    if row["auto"] != "shared":
        return f"{row['auto']} (= left)"
    shared = row["shared"]
    return f"shared: {shared['total']:.3f} ({shared['rest']:.3f})"


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    main()
