"""One-GPU check at LLaVA-1.5-7B shapes: s/step and peak memory of the reference and scoring variants.

    python benchmarks/gpu_check.py                       # one GPU, < 8 min: benchmarks/gpu_check.{json,md}
    python benchmarks/gpu_check.py --out-dir DIR         # elsewhere
    python benchmarks/gpu_check.py --small               # the same code at a tiny shape (automatic without CUDA)

Builds, with no download, a random-init ``LlavaForConditionalGeneration`` at the real LLaVA-1.5-7B
shapes from transformers' config classes (Llama text: hidden 4096, 32 layers, 32 heads,
intermediate 11008, vocab 32064; CLIP ViT-L/14-336 vision: hidden 1024, 24 layers, 16 heads,
intermediate 4096, image 336, patch 14 -> 576 image tokens; 2-layer MLP gelu projector), in bf16,
directly on the GPU. The tokenizer and processor are perpo's embedded tiny ones
(``perpo.models.tiny.build_processor(image_size=336, patch_size=14)``): ~107 real token ids in a
32064-row embedding (decoding skips ids the tokenizer does not know). LoRA r 128, alpha 256
(``perpo.models.lora.apply_lora``) on every language-model linear layer, projector trained in full,
vision tower frozen, N = 20 answers per list.

Each training-step configuration builds the model afresh (same seed), wraps it in LoRA, builds
the pipeline's ``PerPOModule`` with stored lists (``stored_lists=True``, offline mode: the step
reads each list's answers and rewards, so sampling is not in s/step and every configuration
scores the very same tokens) and times ``training_step`` + backward + AdamW step, 1 warm-up +
``--steps`` timed steps (median reported). Peak memory is ``torch.cuda.max_memory_allocated``,
reset before each item's model build: it holds the weights, the reference, activations,
gradients and AdamW state of that configuration.

- ``copy`` / ``adapter_off`` / ``cached`` references (``scoring=shared``). ``cached``: the
  reference log-probs are computed ONCE with the starting model (as ``sample.py
  sample.ref_logps=true`` does; its time is reported apart) and stored in the rows, which
  ``CachedReference`` then reads: no reference model and no reference forward in the step.
- ``shared`` vs ``naive`` scoring (``reference=adapter_off``).
- one in-loop validation: ``module.validation_step`` on ``--val-records`` records (greedy
  decoding, task max_new_tokens) + ``val_metrics.compute()``.
- sampling N answers per prompt with transformers' ``generate`` (perpo's sampler), for scale.
- the vLLM engine (``perpo.sampling.vllm_engine``) where ``import vllm`` works: sampling, and one
  weight sync of online PerPO (``sampling.engine=vllm``); else recorded as not installed.

Every item runs in its own try/except (an OOM is recorded as the item's error), a global time
budget (``--budget-s``) marks the items it leaves as skipped, and the JSON and markdown are
rewritten atomically after every item, so a killed run keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: import this checkout's perpo
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from perpo.atomic import write_json_atomic, write_text_atomic  # noqa: E402

warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached: logging is a no-op
COMMAND = "python benchmarks/gpu_check.py"
BOX_FORMAT = "norm2"  # LLaVA-1.5: normalized [x1, y1, x2, y2], two decimals
LR, BETA, GAMMA = 3e-4, 0.1, 0.5


@dataclass(frozen=True)
class Shape:
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    dtype: str
    listsize: int  # N
    prompts: int  # lists per training step
    max_new_tokens: int  # validation and sampling
    val_records: int
    lora_r: int = 128
    lora_alpha: int = 256

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


LLAVA_7B = Shape(
    text_hidden=4096, text_intermediate=11008, text_layers=32, text_heads=32, vocab=32064,
    vision_hidden=1024, vision_intermediate=4096, vision_layers=24, vision_heads=16,
    image_size=336, patch_size=14, dtype="bfloat16", listsize=20, prompts=1, max_new_tokens=32, val_records=8,
)  # fmt: skip
SMALL = Shape(
    text_hidden=64, text_intermediate=128, text_layers=2, text_heads=4, vocab=128,
    vision_hidden=64, vision_intermediate=128, vision_layers=2, vision_heads=4,
    image_size=32, patch_size=8, dtype="float32", listsize=4, prompts=2, max_new_tokens=8, val_records=2,
    lora_r=8, lora_alpha=16,
)  # fmt: skip

# (name, reference, scoring) of the timed training-step configurations
STEP_CONFIGS = [
    ("copy", "copy", "shared"),
    ("adapter_off", "adapter_off", "shared"),
    ("cached", "cached", "shared"),
    ("naive", "adapter_off", "naive"),
]
ITEMS = [name for name, _, _ in STEP_CONFIGS] + ["validation", "sampling_hf", "vllm"]
# naive out of memory at N: shared vs naive again at N // 2 (both adapter_off), for the ratio
HALF = [("naive_half", "adapter_off", "naive"), ("shared_half", "adapter_off", "shared")]
VLLM_MIN_S = 150  # vLLM's start-up alone takes a minute or more: not begun with less left


# -- building ------------------------------------------------------------------------------------


def build_processor(shape: Shape):
    from perpo.models.tiny import build_processor as tiny_processor

    return tiny_processor(image_size=shape.image_size, patch_size=shape.patch_size)


def build_model(shape: Shape, processor, device: torch.device, seed: int = 0):
    """Random-init LLaVA at ``shape``, built directly on ``device`` in ``shape.dtype``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from perpo.models.tiny import IMAGE

    tok = processor.tokenizer
    if shape.vocab < len(tok):
        raise ValueError(f"vocab {shape.vocab} < the tokenizer's {len(tok)} ids")
    vision = CLIPVisionConfig(
        hidden_size=shape.vision_hidden, intermediate_size=shape.vision_intermediate,
        num_hidden_layers=shape.vision_layers, num_attention_heads=shape.vision_heads,
        image_size=shape.image_size, patch_size=shape.patch_size, projection_dim=768,
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.text_hidden, intermediate_size=shape.text_intermediate,
        num_hidden_layers=shape.text_layers, num_attention_heads=shape.text_heads,
        num_key_value_heads=shape.text_heads, max_position_embeddings=4096, rms_norm_eps=1e-5,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        attention_dropout=0.0, tie_word_embeddings=False,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids(IMAGE),
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )  # fmt: skip
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(
            config, dtype=getattr(torch, shape.dtype), attn_implementation="sdpa"
        )
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model


def build_policy(shape: Shape, processor, device):
    from perpo.models.lora import apply_lora

    return apply_lora(build_model(shape, processor, device), r=shape.lora_r, alpha=shape.lora_alpha)


def task_spec(shape: Shape):
    from omegaconf import OmegaConf

    from perpo.prompting import TaskSpec

    t = OmegaConf.load(ROOT / "conf" / "task" / "grounding.yaml").task
    return TaskSpec(t.name, t.instruction, shape.max_new_tokens)


def make_records(n: int, seed: int = 0) -> list[dict]:
    from omegaconf import OmegaConf

    from perpo.data.synthetic import make_records as synthetic

    generator = OmegaConf.load(ROOT / "conf" / "task" / "grounding.yaml").task.generator
    ds = synthetic("grounding", n, seed, **OmegaConf.to_container(generator))
    return [dict(ds[i]) for i in range(len(ds))]


def stored_rows(shape: Shape, processor, seed: int = 0) -> list[dict]:
    """Stored lists of ``shape.prompts`` grounding records: N jittered target boxes each (LLaVA's
    box text, ~25 tokens with EOS), their IoU rewards and token ids, as ``sample.py`` writes them."""
    from perpo.boxes import get_box_format
    from perpo.prompting import answer_ids
    from perpo.rewards.registry import get_reward

    fmt, reward = get_box_format(BOX_FORMAT), get_reward("iou")
    rng = random.Random(seed)
    rows = []
    for record in make_records(shape.prompts, seed):
        texts = []
        for _ in range(shape.listsize):
            x1, y1, x2, y2 = (min(max(v + rng.uniform(-0.15, 0.15), 0.0), 1.0) for v in record["target"])
            texts.append(fmt.format([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]))
        rewards = [reward(t, record, box_format=BOX_FORMAT) for t in texts]
        rows.append({
            **record, "answers": texts, "answer_ids": answer_ids(processor.tokenizer, texts),
            "rewards": [0.0 if r is None else r for r in rewards], "parsed": [r is not None for r in rewards],
        })  # fmt: skip
    return rows


def make_module(policy, processor, shape: Shape, reference: str, scoring: str, device):
    from perpo.models.parts import param_groups
    from perpo.prompting import ChatFamily
    from perpo.training.config import ListConfig, OptimConfig
    from perpo.training.module import PerPOModule

    module = PerPOModule(
        policy, processor, ChatFamily(processor, BOX_FORMAT), task_spec(shape), None,
        loss="perpo", beta=BETA, gamma=GAMMA, reference=reference, scoring=scoring, stored_lists=True,
        lists=ListConfig(listsize=shape.listsize, min_margin=0.0), optim=OptimConfig(lr=LR, vision_lr=0.0),
    )  # fmt: skip
    module.to(device)  # sets the LightningModule's device (the weights are there already)
    module.train()  # as the Trainer does; the reference stays in eval mode
    # PerPOModule.configure_optimizers without the scheduler (it needs a Trainer)
    optimizer = torch.optim.AdamW(param_groups(module.policy, lr=LR, vision_lr=0.0), lr=LR)
    return module, optimizer


# -- measuring -----------------------------------------------------------------------------------


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def gib(n: int) -> float:
    return round(n / 2**30, 3)


def memory(device) -> dict:
    if device.type != "cuda":
        return {"peak_gib": None}
    return {"peak_gib": gib(torch.cuda.max_memory_allocated(device))}


def precompute_reference(policy, processor, rows, shape: Shape, layout: str) -> list[dict]:
    """Rows with ``ref_logps`` / ``ref_num_tokens`` of the starting policy (LoRA B = 0: the base)."""
    from perpo.listbatch.naive import encode_prefixes
    from perpo.listbatch.packed import score_lists
    from perpo.prompting import ChatFamily

    family, task = ChatFamily(processor, BOX_FORMAT), task_spec(shape)
    prefixes = encode_prefixes(processor, [family.prompt_text(r, task) for r in rows], [r["image"] for r in rows])
    policy.eval()
    with torch.no_grad():
        lp = score_lists(policy, prefixes, [r["answer_ids"] for r in rows], processor.tokenizer.pad_token_id, layout=layout)
    policy.train()
    return [
        {**row, "ref_logps": lp.sum[i].float().tolist(), "ref_num_tokens": lp.num_tokens[i].tolist()}
        for i, row in enumerate(rows)
    ]


def time_steps(reference: str, scoring: str, ctx, listsize: int | None = None) -> dict:
    """1 warm-up + ``ctx.steps`` timed steps of one configuration; ``listsize`` < N: the first
    ``listsize`` answers of each stored list (the scoring fallback when naive runs out of memory)."""
    shape, device, processor = ctx.shape, ctx.device, ctx.processor
    rows = ctx.rows
    if listsize and listsize != shape.listsize:
        shape = replace(shape, listsize=listsize)
        cut = ("answers", "answer_ids", "rewards", "parsed")
        rows = [{**row, **{k: row[k][:listsize] for k in cut}} for row in rows]
    t = time.perf_counter()
    policy = build_policy(shape, processor, device)
    sync(device)
    out = {"reference": reference, "scoring": scoring, "N": shape.listsize, "build_s": round(time.perf_counter() - t, 3)}
    if device.type == "cuda":
        out["weights_gib"] = gib(torch.cuda.memory_allocated(device))
    if reference == "cached":
        t = time.perf_counter()
        rows = precompute_reference(policy, processor, rows, shape, scoring)
        sync(device)
        out["reference_precompute_s"] = round(time.perf_counter() - t, 4)
    module, optimizer = make_module(policy, processor, shape, reference, scoring, device)
    times, losses = [], []
    for i in range(1 + ctx.steps):
        if i and ctx.out_of_time():
            out["stopped_early"] = f"time budget: {i - 1} of {ctx.steps} timed steps"
            break
        sync(device)
        t = time.perf_counter()
        loss = module.training_step(rows, i)
        if loss is None:
            raise RuntimeError("no list kept: the stored rewards should have spread")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t)
        losses.append(float(loss.detach()))
    if len(times) < 2:
        raise RuntimeError("time budget ran out before a timed step")
    out.update(
        warmup_s=round(times[0], 4), step_times_s=[round(x, 4) for x in times[1:]],
        s_per_step=statistics.median(times[1:]), losses=[round(x, 5) for x in losses],
        trainable_params=sum(p.numel() for p in module.policy.parameters() if p.requires_grad),
        **memory(device),
    )  # fmt: skip
    del module, optimizer, policy
    return out


def time_validation(ctx) -> dict:
    shape, device, processor = ctx.shape, ctx.device, ctx.processor
    t = time.perf_counter()
    policy = build_policy(shape, processor, device)
    out = {"build_s": round(time.perf_counter() - t, 3), "records": shape.val_records,
           "max_new_tokens": shape.max_new_tokens}  # fmt: skip
    module, _ = make_module(policy, processor, shape, "adapter_off", "shared", device)
    records = make_records(shape.val_records, seed=1)
    module.eval()  # as the Trainer does around validation
    sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        module.validation_step(records, 0)
    sync(device)
    out["validation_step_s"] = round(time.perf_counter() - t, 4)
    t = time.perf_counter()
    values = module.val_metrics.compute()
    module.val_metrics.reset()
    out["metrics_compute_s"] = round(time.perf_counter() - t, 4)
    out["total_s"] = round(out["validation_step_s"] + out["metrics_compute_s"], 4)
    out["metrics"] = {k: float(v) for k, v in values.items()}
    out.update(memory(device))
    del module, policy
    return out


def time_sampling(ctx) -> dict:
    """perpo's sampler (transformers generate): N answers for each of ``prompts`` records."""
    from perpo.prompting import ChatFamily
    from perpo.sampling.generation import generate

    shape, device, processor = ctx.shape, ctx.device, ctx.processor
    t = time.perf_counter()
    model = build_model(shape, processor, device)
    out = {"build_s": round(time.perf_counter() - t, 3), "prompts": shape.prompts, "n": shape.listsize,
           "max_new_tokens": shape.max_new_tokens}  # fmt: skip
    family, task = ChatFamily(processor, BOX_FORMAT), task_spec(shape)
    prompts = [family.prompt_text(r, task) for r in ctx.rows]
    images = [r["image"] for r in ctx.rows]
    runs = []
    for _ in range(2):  # warm-up + timed
        sync(device)
        t = time.perf_counter()
        ids = generate(model, processor, prompts, images, num_return_sequences=shape.listsize, temperature=1.0,
                       top_p=1.0, max_new_tokens=shape.max_new_tokens)  # fmt: skip
        sync(device)
        runs.append(time.perf_counter() - t)
    out.update(warmup_s=round(runs[0], 4), s_per_call=round(runs[1], 4),
               mean_answer_tokens=statistics.mean(len(a) for row in ids for a in row), **memory(device))  # fmt: skip
    del model
    return out


def time_vllm(ctx) -> dict:
    try:
        import vllm
    except ImportError as err:
        return {"status": "skipped", "reason": f"vllm not installed ({err})"}
    if ctx.device.type != "cuda":
        return {"status": "skipped", "reason": "vLLM needs a GPU"}
    from perpo.models.loading import atomic_save_pretrained
    from perpo.prompting import ChatFamily
    from perpo.sampling.vllm_engine import VLLMEngine, policy_weights, vllm_readable

    shape, processor = ctx.shape, ctx.processor
    out = {"vllm_version": getattr(vllm, "__version__", "?"), "prompts": shape.prompts, "n": shape.listsize}
    with tempfile.TemporaryDirectory(prefix="gpu_check_vllm_") as tmp:
        t = time.perf_counter()
        model = build_model(shape, processor, ctx.device)
        atomic_save_pretrained(model, processor, Path(tmp) / "model")
        out["save_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated, as train.py sampling.engine=vllm
        # transformers 5 saves the CLIP tower without vision_model.: vLLM reads a renamed copy
        engine = VLLMEngine(str(vllm_readable(Path(tmp) / "model", tmp)), eos_token_id=processor.tokenizer.eos_token_id,
                            gpu_memory_utilization=0.4, max_model_len=2048, enforce_eager=True, rename_tower=True)  # fmt: skip
        out["load_s"] = round(time.perf_counter() - t, 3)
        family, task = ChatFamily(processor, BOX_FORMAT), task_spec(shape)
        prompts = [family.prompt_text(r, task) for r in ctx.rows]
        images = [r["image"] for r in ctx.rows]
        runs = []
        for _ in range(2):
            t = time.perf_counter()
            ids = engine.generate(prompts, images, num_return_sequences=shape.listsize, temperature=1.0, top_p=1.0,
                                  max_new_tokens=shape.max_new_tokens, row_seeds=list(range(len(prompts))))  # fmt: skip
            runs.append(time.perf_counter() - t)
        out.update(warmup_s=round(runs[0], 4), s_per_call=round(runs[1], 4),
                   mean_answer_tokens=statistics.mean(len(a) for row in ids for a in row))  # fmt: skip
        # online PerPO (sampling.engine=vllm): one weight sync, the policy's weights into vLLM
        syncs = []
        for _ in range(2):
            t = time.perf_counter()
            engine.load_weights(policy_weights(model))
            syncs.append(time.perf_counter() - t)
        out["weight_sync_s"] = round(syncs[1], 4)
        del engine, model
        free(ctx.device)
    return out


# -- the run -------------------------------------------------------------------------------------


class Context:
    def __init__(self, shape: Shape, device, steps: int, budget_s: float):
        self.shape, self.device, self.steps = shape, device, steps
        self.deadline = time.monotonic() + budget_s
        self.processor = build_processor(shape)
        self.rows = stored_rows(shape, self.processor)

    def out_of_time(self) -> bool:
        return time.monotonic() > self.deadline


def ratios(items: dict) -> dict:
    def ratio(a: str, b: str, key: str):
        x, y = items.get(a, {}).get(key), items.get(b, {}).get(key)
        return round(x / y, 4) if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y else None

    pairs = {"adapter_off/copy": ("adapter_off", "copy"), "cached/copy": ("cached", "copy"),
             "shared/naive": ("adapter_off", "naive")}  # fmt: skip
    if "naive_half" in items:  # naive ran out of memory at N: the ratio at N // 2
        pairs["shared/naive"] = ("shared_half", "naive_half")
    out = {}
    for name, (a, b) in pairs.items():
        out[name] = {"s_per_step": ratio(a, b, "s_per_step"), "peak_memory": ratio(a, b, "peak_gib"),
                     "of": [a, b], "N": items.get(a, {}).get("N")}  # fmt: skip
    return out


def loss_checks(items: dict) -> dict:
    """Max |loss - copy's loss| over the steps of every configuration scoring the same N lists:
    all start at the same weights and see the same tokens, so they follow the same losses
    (up to the dtype's rounding)."""
    base = items.get("copy", {}).get("losses")
    out = {}
    for name, item in items.items():
        losses = item.get("losses")
        if base and losses and name != "copy" and item.get("N") == items["copy"].get("N"):
            out[name] = max(abs(a - b) for a, b in zip(losses, base))
    return out


def environment(shape: Shape, device, args) -> dict:
    import transformers

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:  # pragma: no cover
        peft_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    return {
        "command": " ".join([COMMAND, *sys.argv[1:]]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "cuda": torch.version.cuda,
        "small": args.small,
        "dtype": shape.dtype,
        "shape": {**asdict(shape), "image_tokens": shape.image_tokens},
        "N": shape.listsize,
        "steps": {"warmup": 1, "timed": args.steps},
        "budget_s": args.budget_s,
    }


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(result: dict) -> str:
    env, items = result["env"], result["items"]
    s = env["shape"]
    lines = [
        "# gpu_check: PerPO training steps at LLaVA-1.5-7B shapes" if not env["small"] else
        "# gpu_check (--small: the same code at a tiny shape)",
        "",
        f"Command: `{env['command']}` (this file and its JSON are written by `{COMMAND}`; "
        "`--small` runs the same code at a tiny shape, `--out-dir` writes elsewhere).",
        "",
        f"Device: {env['device']}; torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}; "
        f"{env['date']}; {result['elapsed_s']:.0f} s of a {env['budget_s']:.0f} s budget"
        f"{'' if result['finished'] else ' (run not finished: partial results)'}.",
        "",
        f"Model: random-init LLaVA in {env['dtype']}: Llama text hidden {s['text_hidden']}, {s['text_layers']} layers, "
        f"{s['text_heads']} heads, intermediate {s['text_intermediate']}, vocab {s['vocab']}; CLIP vision hidden "
        f"{s['vision_hidden']}, {s['vision_layers']} layers, {s['vision_heads']} heads, intermediate "
        f"{s['vision_intermediate']}, image {s['image_size']}, patch {s['patch_size']} ({s['image_tokens']} image "
        f"tokens); 2-layer MLP gelu projector. LoRA r {s['lora_r']}, alpha {s['lora_alpha']} on the language model; "
        f"N = {env['N']}, {s['prompts']} list(s) per step; 1 warm-up + {env['steps']['timed']} timed steps (median).",
        "",
        "Steps score stored lists (offline mode: answers and rewards read, no sampling in s/step); "
        "`cached` reads reference log-probs computed once beforehand (no reference model, no reference forward). "
        "Peak memory: `torch.cuda.max_memory_allocated`, reset before each item's model build (weights included)"
        + ("; not measured on CPU." if env["device"].startswith("CPU") else "."),
        "",
        "| configuration | reference | scoring | N | s/step | peak GiB | weights GiB | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in [n for n, _, _ in STEP_CONFIGS] + [n for n, _, _ in HALF if n in items]:
        it = items.get(name, {"status": "pending"})
        lines.append(
            f"| {name} | {it.get('reference', '-')} | {it.get('scoring', '-')} | {fmt(it.get('N'))} "
            f"| {fmt(it.get('s_per_step'), 4)} "
            f"| {fmt(it.get('peak_gib'))} | {fmt(it.get('weights_gib'))} | {status_text(it)} |"
        )
    if "reference_precompute_s" in items.get("cached", {}):
        lines += ["", f"`cached`: reference log-probs precomputed once in {items['cached']['reference_precompute_s']:.3f} s."]
    lines += ["", "| ratio | s/step | peak memory |", "|---|---|---|"]
    for name, r in result["ratios"].items():
        of = f" ({r['of'][0]} / {r['of'][1]}, N = {r['N']})" if r["of"][0] == "shared_half" else ""
        lines.append(f"| {name}{of} | {fmt(r['s_per_step'])} | {fmt(r['peak_memory'])} |")
    if result.get("loss_checks"):
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in result["loss_checks"].items())
        lines += ["", f"Same lists, same start: max |loss - copy's loss| over the steps: {diffs}."]
    v, h, g = (items.get(k, {"status": "pending"}) for k in ("validation", "sampling_hf", "vllm"))
    lines += [
        "",
        "| other | seconds | peak GiB | status |",
        "|---|---|---|---|",
        f"| in-loop validation: validation_step ({fmt(v.get('records'))} records) + val_metrics.compute | "
        f"{fmt(v.get('total_s'))} | {fmt(v.get('peak_gib'))} | {status_text(v)} |",
        f"| sampling, transformers generate: N per prompt, {fmt(h.get('prompts'))} prompt(s) | "
        f"{fmt(h.get('s_per_call'))} | {fmt(h.get('peak_gib'))} | {status_text(h)} |",
        f"| sampling, vLLM engine: same | {fmt(g.get('s_per_call'))} | - | {status_text(g)} |",
        f"| online: the policy's weights into vLLM (one sync) | {fmt(g.get('weight_sync_s'))} | - | {status_text(g)} |",
        "",
    ]
    return "\n".join(lines)


def status_text(item: dict) -> str:
    status = item.get("status", "pending")
    if status == "error":
        return "error: " + item.get("error", "").splitlines()[0][:160].replace("|", "/")
    if status == "skipped":
        return "skipped: " + item.get("reason", "")
    return status + (f" ({item['stopped_early']})" if "stopped_early" in item else "")


def importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--small", action="store_true", help="tiny shape (automatic without CUDA)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="items starting after this are skipped")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after 1 warm-up)")
    parser.add_argument("--listsize", type=int, default=None, help="N (default: 20, --small: 4)")
    parser.add_argument("--prompts", type=int, default=None, help="lists per step (default: 1, --small: 2)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    cuda = torch.cuda.is_available()
    args.small = args.small or not cuda
    device = torch.device("cuda:0" if cuda else "cpu")
    shape = SMALL if args.small else LLAVA_7B
    shape = replace(shape, listsize=args.listsize or shape.listsize, prompts=args.prompts or shape.prompts)
    json_path, md_path = args.out_dir / "gpu_check.json", args.out_dir / "gpu_check.md"
    result = {"env": environment(shape, device, args), "items": {}, "ratios": {}, "finished": False, "elapsed_s": 0.0}

    def save():
        result["ratios"] = ratios(result["items"])
        result["loss_checks"] = loss_checks(result["items"])
        result["elapsed_s"] = round(time.monotonic() - t0, 2)
        write_json_atomic(json_path, result)
        write_text_atomic(md_path, markdown(result))

    save()
    ctx = Context(shape, device, args.steps, args.budget_s - (time.monotonic() - t0))
    runners = {name: (lambda ref=ref, sc=sc: time_steps(ref, sc, ctx)) for name, ref, sc in STEP_CONFIGS}
    runners.update({name: (lambda ref=ref, sc=sc: time_steps(ref, sc, ctx, max(shape.listsize // 2, 2)))
                    for name, ref, sc in HALF})  # fmt: skip
    runners.update(validation=lambda: time_validation(ctx), sampling_hf=lambda: time_sampling(ctx),
                   vllm=lambda: time_vllm(ctx))  # fmt: skip
    queue = list(ITEMS)
    while queue:
        name = queue.pop(0)
        if name == "vllm" and ctx.deadline - time.monotonic() < VLLM_MIN_S and importable("vllm"):
            result["items"][name] = {"status": "skipped", "reason": f"less than {VLLM_MIN_S} s of the budget left"}
            save()
            continue
        if ctx.out_of_time():
            result["items"][name] = {"status": "skipped", "reason": f"time budget ({args.budget_s:.0f} s) spent"}
            save()
            continue
        free(device)
        t = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            item = runners[name]()
            item.setdefault("status", "ok")
        except Exception as err:  # an OOM or any failure is this item's result, not the run's end
            item = {"status": "error", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=8)}
            item.update(memory(device))
            configs = {n: {"reference": r, "scoring": sc} for n, r, sc in STEP_CONFIGS + HALF}
            item.update(configs.get(name, {}))
        item["wall_s"] = round(time.perf_counter() - t, 2)
        print(f"[gpu_check] {name}: {status_text(item)} in {item['wall_s']:.1f} s", flush=True)
        result["items"][name] = item
        if name == "naive" and "out of memory" in item.get("error", "").lower():
            queue[:0] = [n for n, _, _ in HALF]  # next: shared vs naive at N // 2
        free(device)
        save()
    result["finished"] = True
    save()
    print(f"[gpu_check] wrote {json_path} and {md_path}", flush=True)
    return result


if __name__ == "__main__":
    main()
