"""Offline discriminative rewarding (``sample.py``): sample N answers per prompt once, score
them, keep the lists with spread, store them; ``train.py data.lists=<dir>`` trains on them.

    records -> chunks of ``sample.chunk_size`` -> (this rank's chunks) -> N samples per prompt
            -> rewards -> keep best - worst >= min_margin -> [reference log-probs]
            -> <out>/data/chunk-00012.parquet + <out>/progress/chunk-00012.json

Resumable by construction: chunk i always holds records [i*S, (i+1)*S), each record's N answers
are drawn from its own seed (``sample.seed`` and its id: ``perpo.sampling.generation.record_seed``), and a
chunk's parquet shard and then its progress file are written
atomically (tmp + rename). A run killed at any moment and started again with the same command
skips the chunks whose progress file exists and redoes the rest: no finished row is lost and
none is written twice (a redone chunk overwrites its own shard with the same rows). Ranks take
chunks round-robin (chunk i belongs to rank i % world_size), so a resumed run may even use
another number of processes. ``meta.json`` pins what determines the lists; starting again with
a different setting into the same folder is refused, naming the keys that differ.

Each stored list is its record plus ``answers`` / ``rewards`` / ``parsed`` / ``answer_ids``
(the sampler's token ids) and, with ``sample.ref_logps=true``, the reference log-probs of
every answer (``ref_logps``, ``ref_num_tokens``): the sampling model is the reference of the
training that follows, so ``reference=cached`` then needs no reference model at all.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from perpo.atomic import atomic_write, write_json_atomic
from perpo.data.records import COLUMNS
from perpo.data.stored_lists import (
    HIST_BINS,
    META,
    SUMMARY,
    ListsError,
    chunk_name,
    done_chunks,
    list_features,
    read_json,
    summarize,
)
from perpo.rewards.scored_lists import decode_and_score, keep_mask

log = logging.getLogger(__name__)


def my_chunks(num_records: int, chunk_size: int, rank: int, world_size: int) -> list[int]:
    """Chunk indices this rank samples: round-robin over ranks."""
    total = math.ceil(num_records / chunk_size)
    return [i for i in range(total) if i % world_size == rank]


def check_meta(out_dir: Path, meta: dict) -> None:
    """Write ``meta.json``, or refuse when the folder holds lists made with other settings."""
    path = out_dir / META
    if path.exists():
        old = read_json(path)
        differ = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
        if differ:
            shown = "; ".join(f"{k}: stored {old.get(k)!r}, now {meta.get(k)!r}" for k in differ)
            raise ListsError(
                f"{out_dir} holds lists sampled with other settings ({shown}); resume with the same "
                "settings, or choose another sample.out_dir"
            )
        return
    write_json_atomic(path, meta)


# ----- one chunk --------------------------------------------------------------------------
def sample_chunk(
    model: torch.nn.Module,
    processor: Any,
    family: Any,
    task: Any,
    reward_fn,
    records: Sequence[dict],
    *,
    listsize: int,
    min_margin: float,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
    ref_logps: bool,
    layout: str = "naive",
    engine: Any = None,
) -> tuple[list[dict], dict]:
    """Sample, score and filter the lists of ``records``: (kept rows, this chunk's counts)."""
    from perpo.listbatch.naive import encode_prefixes
    from perpo.listbatch.packed import batch_logps, build_batch
    from perpo.sampling.generation import generate, record_seed

    rows: list[dict] = []
    counts = {"records": 0, "kept": 0, "dropped": 0, "answers": 0, "unparsed": 0, "hist": [0] * HIST_BINS}
    pad_id = processor.tokenizer.pad_token_id
    for start in range(0, len(records), batch_size):
        batch = [records[i] for i in range(start, min(start + batch_size, len(records)))]
        prompts = [family.prompt_text(r, task) for r in batch]
        images = [r["image"] for r in batch]
        seeds = [record_seed(seed, 0, str(r["id"])) for r in batch]  # any chunking, any rank: same lists
        options = dict(
            num_return_sequences=listsize, temperature=temperature, top_p=top_p,
            max_new_tokens=task.max_new_tokens, row_seeds=seeds,
        )  # fmt: skip
        if engine is None:
            answers = generate(model, processor, prompts, images, **options)
        else:  # perpo.sampling.vllm_engine.VLLMEngine on GPUs
            answers = engine.generate(prompts, images, **options)
        scored = decode_and_score(reward_fn, batch, answers, processor)
        keep = keep_mask(scored, min_margin)
        counts["records"] += len(batch)
        counts["kept"] += int(keep.sum())
        counts["dropped"] += int((~keep).sum())
        counts["answers"] += scored.rewards.numel()
        counts["unparsed"] += int((~scored.parsed).sum())
        for value in scored.rewards.flatten().tolist():
            counts["hist"][min(int(value * HIST_BINS), HIST_BINS - 1)] += 1
        kept = keep.nonzero().squeeze(1).tolist()
        if not kept:
            continue
        ref = None
        if ref_logps:  # the sampling model is the reference of the training that follows
            prefixes = encode_prefixes(processor, prompts, images)
            device = next(model.parameters()).device
            lists = build_batch(prefixes, [answers[i] for i in kept], pad_id, select=kept, layout=layout).to(device)
            with torch.no_grad():
                ref = batch_logps(model, lists)
        for j, i in enumerate(kept):
            row = {k: batch[i][k] for k in COLUMNS}
            row.update(
                answers=scored.texts[i], rewards=scored.rewards[i].tolist(), parsed=scored.parsed[i].tolist(),
                answer_ids=answers[i],
            )  # fmt: skip
            if ref is not None:
                row.update(ref_logps=ref.sum[j].tolist(), ref_num_tokens=ref.num_tokens[j].int().tolist())
            rows.append(row)
    return rows, counts


def write_chunk(out_dir: Path, index: int, rows: list[dict], counts: dict, *, task: str, ref_logps: bool) -> None:
    """Shard first, progress file second: a chunk counts as done only once its rows are on disk."""
    import datasets

    if rows:
        features = list_features(task, answer_ids=True, ref_logps=ref_logps)
        shard = datasets.Dataset.from_list(rows, features=features)
        atomic_write(out_dir / "data" / f"{chunk_name(index)}.parquet", lambda tmp: shard.to_parquet(tmp))
    write_json_atomic(out_dir / "progress" / f"{chunk_name(index)}.json", counts)


def format_summary(summary: dict) -> str:
    lines = [
        f"lists: {summary['kept']} kept, {summary['dropped']} dropped (spread < min_margin) of "
        f"{summary['records']} prompts; {summary['unparsed']} of {summary['answers']} answers did not parse "
        f"({summary['unparsed_fraction']:.1%}); chunks {summary['chunks_done']}/{summary['chunks_total']}",
        "reward histogram:",
    ]
    hist = summary["hist"]
    peak = max(max(hist), 1)
    for b, count in enumerate(hist):
        lo, hi = b / HIST_BINS, (b + 1) / HIST_BINS
        lines.append(f"  [{lo:.1f}, {hi:.1f}{']' if b == HIST_BINS - 1 else ')'} {count:7d} {'#' * round(40 * count / peak)}")
    return "\n".join(lines)


# ----- the command --------------------------------------------------------------------------
def lists_dir(cfg: DictConfig) -> Path:
    return Path(cfg.sample.out_dir)


def sample_meta(cfg: DictConfig, base_path: Path, num_records: int) -> dict:
    """Everything that determines the stored lists (compared on resume)."""
    return {
        "base": str(base_path),
        "task": cfg.task.name,
        "reward": OmegaConf.to_container(cfg.reward, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "split": cfg.sample.split,
        "num_records": num_records,
        "listsize": int(cfg.listsize),
        "min_margin": float(cfg.sample.min_margin),
        "temperature": float(cfg.sampling.temperature),
        "top_p": float(cfg.sampling.top_p),
        "seed": int(cfg.sample.seed),
        "engine": cfg.sample.get("engine", "transformers"),  # other engines draw other answers
        "chunk_size": int(cfg.sample.chunk_size),
        "ref_logps": bool(cfg.sample.ref_logps),
        "box_format": cfg.model.box_format,
        "system_prompt": cfg.model.get("system_prompt"),
    }


def run_sampling(cfg: DictConfig) -> dict:
    """What ``sample.py`` runs. Returns the summary over all chunks finished so far."""
    from tqdm.auto import tqdm

    from perpo.commands.common import (
        blank_where_asked,
        build_reward,
        build_splits,
        load_base,
    )
    from perpo.prompting import task_spec
    from perpo.training.runtime import device_for
    from perpo.training.warmstart import prepare_base

    out_dir = lists_dir(cfg)
    task = task_spec(cfg)
    splits = build_splits(cfg)
    base_path = prepare_base(cfg, splits)
    splits = blank_where_asked(cfg, splits)
    split = cfg.sample.split
    if split not in splits:
        raise ListsError(f"sample.split={split} is not a split of the data; choose one of {sorted(splits)}")
    records = splits[split]
    rank, world = int(cfg.sample.rank), int(cfg.sample.world_size)
    chunk_size = int(cfg.sample.chunk_size)
    total_chunks = math.ceil(len(records) / chunk_size)
    check_meta(out_dir, sample_meta(cfg, base_path, len(records)))

    mine = my_chunks(len(records), chunk_size, rank, world)
    done = done_chunks(out_dir)
    todo = [i for i in mine if i not in done]
    log.info(
        "sampling %d lists of N=%d into %s: rank %d/%d has %d chunks, %d already done",
        len(records), cfg.listsize, out_dir, rank, world, len(mine), len(mine) - len(todo),
    )  # fmt: skip
    if todo:
        import datasets

        datasets.disable_progress_bars()  # one bar here: rows sampled (the shard writes are quick)
        model, processor, family, records_by_split = load_base(cfg, base_path, {split: records})
        records = records_by_split[split]
        model.to(device_for(cfg)).eval()
        reward_fn = build_reward(cfg)
        from perpo.listbatch.packed import resolve_layout
        from perpo.training.reference import disable_dropout

        disable_dropout(model)
        layout = resolve_layout(cfg.get("scoring", "auto"), model, processor)
        engine = None
        if cfg.sample.get("engine", "transformers") == "vllm":
            from perpo.sampling.vllm_engine import build_engine

            options = OmegaConf.to_container(cfg.sample.get("vllm") or {}, resolve=True)
            engine = build_engine(base_path, cfg.paths.cache_dir, model, processor, dtype=str(cfg.model.dtype), options=options)
        rows_done = sum(min(chunk_size, len(records) - i * chunk_size) for i in mine if i in done)
        rows_mine = sum(min(chunk_size, len(records) - i * chunk_size) for i in mine)
        bar = tqdm(total=rows_mine, initial=rows_done, unit="rows", desc=f"sample N={cfg.listsize}", dynamic_ncols=True)
        start = time.time()
        for index in todo:
            lo, hi = index * chunk_size, min((index + 1) * chunk_size, len(records))
            rows, counts = sample_chunk(
                model, processor, family, task, reward_fn, records.select(range(lo, hi)),
                listsize=int(cfg.listsize), min_margin=float(cfg.sample.min_margin),
                temperature=float(cfg.sampling.temperature), top_p=float(cfg.sampling.top_p),
                batch_size=int(cfg.sample.batch_size), seed=int(cfg.sample.seed),
                ref_logps=bool(cfg.sample.ref_logps), layout=layout, engine=engine,
            )  # fmt: skip
            write_chunk(out_dir, index, rows, counts, task=task.name, ref_logps=bool(cfg.sample.ref_logps))
            bar.update(hi - lo)
            bar.set_postfix(kept=f"{counts['kept']}/{counts['records']}")
        bar.close()
        log.info("sampled %d chunks in %.0f s", len(todo), time.time() - start)
    summary = summarize(out_dir, total_chunks)
    if summary["complete"]:
        write_json_atomic(out_dir / SUMMARY, summary)
    log.info("%s", format_summary(summary))
    return summary


