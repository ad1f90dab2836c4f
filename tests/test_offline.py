"""Offline discriminative rewarding (perpo/commands/sample.py, sample.py) and training on stored lists.

In-process: chunk bookkeeping, one chunk sampled with the session tiny model, and the three
references (copy, adapter_off, cached) giving the same loss on the same stored lists.
Subprocess: ``sample.py`` killed with SIGKILL mid-run and started again ends with exactly the
lists of an uninterrupted run; ``train.py data.lists=... reference=cached`` trains on them.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from subprocess_runs import REPO, WARM_START, script_env
import torch

no_trainer_log_warning = pytest.mark.filterwarnings("ignore:You are trying to .self.log:UserWarning")


def length_reward(text: str, record) -> float:
    """A reward that spreads any list of different answers (the tiny random model cannot ground)."""
    return (len(text) % 7) / 6


# -- bookkeeping -------------------------------------------------------------------------------


def test_chunks_are_round_robin_over_ranks():
    from perpo.commands.sample import my_chunks

    # 10 records in chunks of 3 -> chunks 0..3 (the last holds 1 record)
    assert my_chunks(10, 3, rank=0, world_size=1) == [0, 1, 2, 3]
    assert my_chunks(10, 3, rank=0, world_size=2) == [0, 2]
    assert my_chunks(10, 3, rank=1, world_size=2) == [1, 3]
    assert my_chunks(0, 3, rank=0, world_size=1) == []


def test_meta_mismatch_is_refused_naming_the_keys(tmp_path):
    from perpo.data.stored_lists import ListsError
    from perpo.commands.sample import check_meta

    check_meta(tmp_path, {"listsize": 8, "seed": 1, "base": "b"})
    check_meta(tmp_path, {"listsize": 8, "seed": 1, "base": "b"})  # same settings: resume
    with pytest.raises(ListsError) as info:
        check_meta(tmp_path, {"listsize": 20, "seed": 1, "base": "b"})
    assert "listsize: stored 8, now 20" in str(info.value) and "sample.out_dir" in str(info.value)


def test_summary_histogram_and_completeness(tmp_path):
    from perpo.atomic import write_json_atomic
    from perpo.commands.sample import format_summary
    from perpo.data.stored_lists import summarize

    base = {"records": 4, "kept": 3, "dropped": 1, "answers": 16, "unparsed": 2}
    write_json_atomic(tmp_path / "progress" / "chunk-00000.json", {**base, "hist": [16] + [0] * 9})
    write_json_atomic(tmp_path / "progress" / "chunk-00002.json", {**base, "hist": [0] * 9 + [16]})
    summary = summarize(tmp_path, total_chunks=3)
    assert summary["kept"] == 6 and summary["answers"] == 32 and summary["hist"][0] == summary["hist"][9] == 16
    assert summary["chunks_done"] == 2 and not summary["complete"]
    assert summary["unparsed_fraction"] == pytest.approx(4 / 32)
    text = format_summary(summary)
    assert "6 kept, 2 dropped" in text and "[0.9, 1.0]      16" in text


# -- one chunk, in-process ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored_rows(tiny, family, task):
    """Kept lists of 4 grounding records, N=3, with reference log-probs (naive layout)."""
    from perpo.data import make_records
    from perpo.commands.sample import sample_chunk

    model, processor = tiny
    ds = make_records("grounding", 4, seed=3)
    records = [ds[i] for i in range(len(ds))]
    rows, counts = sample_chunk(
        model, processor, family, task, length_reward, records, listsize=3, min_margin=0.0,
        temperature=1.0, top_p=1.0, batch_size=2, seed=7, ref_logps=True, layout="naive",
    )  # fmt: skip
    return records, rows, counts


def test_sample_chunk_keeps_lists_with_spread_and_stores_their_reference(stored_rows, tiny, family, task):
    from perpo.listbatch.naive import encode_prefixes
    from perpo.listbatch.packed import batch_logps, build_batch

    records, rows, counts = stored_rows
    assert counts["records"] == 4 and counts["answers"] == 12 and sum(counts["hist"]) == 12
    assert counts["kept"] + counts["dropped"] == 4 and counts["kept"] == len(rows) >= 2
    model, processor = tiny
    for row in rows:
        rewards = [length_reward(t, row) for t in row["answers"]]
        assert row["rewards"] == pytest.approx(rewards)
        assert max(rewards) > min(rewards)  # spread > 0
        assert len(row["answer_ids"]) == len(row["ref_logps"]) == len(row["ref_num_tokens"]) == 3
        # the stored reference log-prob is the model's log-prob of exactly the stored tokens
        prefixes = encode_prefixes(processor, [family.prompt_text(row, task)], [row["image"]])
        batch = build_batch(prefixes, [row["answer_ids"]], processor.tokenizer.pad_token_id, layout="naive")
        with torch.no_grad():
            lp = batch_logps(model, batch)
        assert lp.sum[0].tolist() == pytest.approx(row["ref_logps"], rel=1e-6, abs=1e-5)  # other batch: rounding
        assert lp.num_tokens[0].tolist() == row["ref_num_tokens"]


def test_a_records_lists_do_not_depend_on_its_chunk(stored_rows, tiny, family, task):
    """Each record's answers come from its own seed: sampling the last two records alone (another
    chunking, another batch) gives exactly their lists again."""
    from perpo.commands.sample import sample_chunk

    records, rows, _ = stored_rows
    again, _ = sample_chunk(
        tiny[0], tiny[1], family, task, length_reward, records[2:], listsize=3, min_margin=0.0,
        temperature=1.0, top_p=1.0, batch_size=1, seed=7, ref_logps=False,
    )  # fmt: skip
    ids = {r["id"] for r in records[2:]}
    assert [r["answer_ids"] for r in again] == [r["answer_ids"] for r in rows if r["id"] in ids]


def _module(policy, processor, family, task, reference):
    from perpo.training.config import ListConfig
    from perpo.training.module import PerPOModule

    return PerPOModule(
        policy, processor, family, task, None, loss="perpo", beta=0.1, gamma=0.5, reference=reference,
        lists=ListConfig(listsize=3, min_margin=0.0), stored_lists=True, scoring="naive",
    )  # fmt: skip


@no_trainer_log_warning
def test_copy_adapter_off_and_cached_references_give_the_same_loss(stored_rows, tiny, family, task):
    """On the same stored lists, before any update the policy equals the reference, so all three
    references see the same log-probs: the loss is identical (PerPO at policy == ref is
    sum_pairs w_ij * log 2 / sum w_ij = log 2 for every kept list)."""
    import math

    from perpo.models.lora import apply_lora

    _, rows, _ = stored_rows
    model, processor = tiny
    losses = {}
    for reference in ("copy", "cached"):
        module = _module(copy.deepcopy(model), processor, family, task, reference)
        losses[reference] = float(module.training_step(rows, 0).detach())
    lora = apply_lora(copy.deepcopy(model), r=4, alpha=8, dropout=0.0)
    losses["adapter_off"] = float(_module(lora, processor, family, task, "adapter_off").training_step(rows, 0).detach())
    assert losses["copy"] == pytest.approx(math.log(2), abs=1e-5)
    assert losses["cached"] == pytest.approx(losses["copy"], abs=1e-5)
    assert losses["adapter_off"] == pytest.approx(losses["copy"], abs=1e-5)


@no_trainer_log_warning
def test_cached_reference_after_an_update_matches_the_frozen_copy(stored_rows, tiny, family, task):
    """After an optimizer step the policy moves; the cached and the copied reference do not."""
    _, rows, _ = stored_rows
    model, processor = tiny
    values = {}
    for reference in ("copy", "cached"):
        torch.manual_seed(0)
        module = _module(copy.deepcopy(model), processor, family, task, reference)
        optim = torch.optim.SGD([p for p in module.policy.parameters() if p.requires_grad], lr=0.5)
        module.training_step(rows, 0).backward()
        optim.step()
        values[reference] = float(module.training_step(rows, 1).detach())
    assert values["copy"] != pytest.approx(0.6931, abs=1e-4)  # the policy moved
    assert values["cached"] == pytest.approx(values["copy"], abs=1e-5)


def test_cached_reference_without_stored_logps_names_the_fix(tiny):
    from perpo.listbatch.naive import ListBatch
    from perpo.training.reference import CachedReference

    batch = ListBatch(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool), {}, 1, 2)
    with pytest.raises(ValueError, match="sample.ref_logps=true"):
        CachedReference().logps(batch, [{"id": "r1", "answers": ["a", "b"]}])


# -- sample.py and train.py, subprocesses ------------------------------------------------------

BUDGET = [
    *WARM_START, "data.sizes.train=96", "data.sizes.val=4", "data.sizes.test=8", "data.batch_size=4", "listsize=4",
    "data.min_margin=0.0", "eval.batch_size=8", "sample.chunk_size=8", "sample.batch_size=8",
]  # fmt: skip




def _cmd(script: str, cache: Path, *overrides: str) -> list[str]:
    return [sys.executable, script, f"paths.cache_dir={cache}", *BUDGET, *overrides]


def _sample(cache: Path, out: Path, run_dir: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _cmd("sample.py", cache, f"sample.out_dir={out}", f"hydra.run.dir={run_dir}"),
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _shard_rows(out: Path) -> dict[str, tuple]:
    """id -> (answers, rewards, ref_logps) over every shard; asserts no id is stored twice."""
    import pyarrow.parquet as pq

    rows: dict[str, tuple] = {}
    for shard in sorted((out / "data").glob("chunk-*.parquet")):
        table = pq.read_table(shard, columns=["id", "answers", "rewards", "ref_logps"]).to_pylist()
        for row in table:
            assert row["id"] not in rows, f"{row['id']} stored twice"
            rows[row["id"]] = (tuple(row["answers"]), tuple(row["rewards"]), tuple(row["ref_logps"]))
    return rows


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """One uninterrupted sample.py run (the warm start is cached for the others)."""
    root = tmp_path_factory.mktemp("offline")
    cache = root / "cache"
    _sample(cache, root / "lists_full", root / "run_full")
    return root, cache


def test_sample_py_writes_shards_summary_and_meta(sampled):
    root, _ = sampled
    out = root / "lists_full"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["chunks_total"] == 12 and summary["records"] == 96
    assert summary["kept"] + summary["dropped"] == 96 and sum(summary["hist"]) == 96 * 4
    assert len(_shard_rows(out)) == summary["kept"] > 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["listsize"] == 4 and meta["ref_logps"] is True


def test_sample_py_killed_mid_run_resumes_to_the_same_lists(sampled):
    """SIGKILL once the first chunks are on disk; the same command again finishes the rest. The
    result equals the uninterrupted run's row for row: nothing lost, nothing written twice."""
    root, cache = sampled
    out, run_dir = root / "lists_killed", root / "run_killed"
    proc = subprocess.Popen(
        _cmd("sample.py", cache, f"sample.out_dir={out}", f"hydra.run.dir={run_dir}"),
        cwd=REPO, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "progress" / "chunk-00001.json").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list((out / "progress").glob("chunk-*.json")))
    assert 2 <= done_at_kill < 12 and not (out / "summary.json").exists(), done_at_kill
    # a shard written but not yet marked done (killed between the two writes) is redone, not duplicated
    (out / "progress" / "chunk-00000.json").unlink()

    resumed = _sample(cache, out, run_dir)
    assert f"{done_at_kill - 1} already done" in resumed.stdout + resumed.stderr + (run_dir / "sample.log").read_text()
    assert _shard_rows(out) == _shard_rows(root / "lists_full")
    assert json.loads((out / "summary.json").read_text()) == json.loads((root / "lists_full" / "summary.json").read_text())


def test_changed_settings_into_the_same_folder_are_refused(sampled):
    root, cache = sampled
    proc = subprocess.run(
        _cmd("sample.py", cache, f"sample.out_dir={root / 'lists_full'}", "listsize=5", f"hydra.run.dir={root / 'r5'}"),
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "listsize: stored 4, now 5" in proc.stderr


def test_train_on_stored_lists_with_cached_reference(sampled):
    root, cache = sampled
    run_dir = root / "train_cached"
    proc = subprocess.run(
        _cmd(
            "train.py", cache, f"data.lists={root / 'lists_full'}", "reference=cached", "trainer.max_steps=3",
            "trainer.log_every_n_steps=1", f"hydra.run.dir={run_dir}", "optim.lr=1e-2",
        ),
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads((run_dir / "results.json").read_text())
    counters = results["list_counters"]
    assert counters["lists_seen"] == 12 and counters["lists_kept"] == 12  # 3 steps x 4 stored lists
    assert counters["answers"] == 48
    log_text = (run_dir / "train.log").read_text()
    assert "training on" in log_text and "stored lists of N=4" in log_text
    assert "SFT warm start: reusing the cached base" in log_text  # the lists' base: cached refs fit


def test_cached_reference_needs_lists_and_unfinished_lists_are_refused(sampled, tmp_path):
    root, cache = sampled
    proc = subprocess.run(
        _cmd("train.py", cache, "reference=cached", f"hydra.run.dir={tmp_path / 'a'}"),
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "set data.lists=" in proc.stderr
    unfinished = root / "lists_killed_copy"
    import shutil

    shutil.copytree(root / "lists_full", unfinished)
    (unfinished / "summary.json").unlink()
    (unfinished / "progress" / "chunk-00003.json").unlink()
    proc = subprocess.run(
        _cmd("train.py", cache, f"data.lists={unfinished}", "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'b'}"),
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "unfinished (11 of 12 chunks)" in proc.stderr


def test_two_ranks_sample_disjoint_chunks_and_together_equal_one_process(sampled):
    """sample.rank / sample.world_size: each rank takes every other chunk; after both ran (here one
    after the other), the folder holds exactly the lists of the single-process run."""
    root, cache = sampled
    out = root / "lists_ranks"
    for rank in (0, 1):
        proc = subprocess.run(
            _cmd("sample.py", cache, f"sample.out_dir={out}", f"hydra.run.dir={root / f'rank{rank}'}",
                 f"sample.rank={rank}", "sample.world_size=2"),
            cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        done = sorted(int(p.stem.split("-")[1]) for p in (out / "progress").glob("chunk-*.json"))
        if rank == 0:
            assert done == [0, 2, 4, 6, 8, 10] and not (out / "summary.json").exists()
    assert _shard_rows(out) == _shard_rows(root / "lists_full")
    assert json.loads((out / "summary.json").read_text()) == json.loads((root / "lists_full" / "summary.json").read_text())


def test_sample_py_with_the_vllm_engine_against_a_stand_in(sampled):
    """``sample.engine=vllm`` end to end through sample.py, with ``tests/fake_vllm`` (vLLM's
    documented offline API, transformers underneath) first on PYTHONPATH: the requests carry the
    chat prompt with one image placeholder and the PIL image, one seeded SamplingParams per
    record with N, the sampling settings, perpo's EOS as stop token and the sample.vllm options;
    answers end with EOS whether or not vLLM kept it; the stored lists are complete, their
    rewards are those of their answers, and reference log-probs are stored. The meta records
    the engine, so a resume with the other engine is refused."""
    import pyarrow.parquet as pq

    from perpo.sampling.generation import record_seed

    root, cache = sampled
    out = root / "lists_vllm"
    env = script_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "fake_vllm"), env.get("PYTHONPATH", "")])
    env["FAKE_VLLM_LOG"] = str(root / "vllm_calls.jsonl")
    cmd = _cmd("sample.py", cache, f"sample.out_dir={out}", f"hydra.run.dir={root / 'run_vllm'}", "sample.engine=vllm",
               "sample.vllm.gpu_memory_utilization=0.3")  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["records"] == 96 and sum(summary["hist"]) == 96 * 4
    meta = json.loads((out / "meta.json").read_text())
    assert meta["engine"] == "vllm"
    rows = [r for shard in sorted((out / "data").glob("chunk-*.parquet")) for r in pq.read_table(shard).to_pylist()]
    assert len(rows) == summary["kept"] > 0
    from transformers import AutoTokenizer

    base = json.loads((out / "meta.json").read_text())["base"]
    tok = AutoTokenizer.from_pretrained(base)
    for row in rows:
        assert len(row["answers"]) == len(row["answer_ids"]) == len(row["ref_logps"]) == 4
        for text, ids in zip(row["answers"], row["answer_ids"]):
            assert tok.decode(ids, skip_special_tokens=True).strip() == text
    ended = [ids for row in rows for ids in row["answer_ids"] if len(ids) < 4 + 60]
    assert any(ids[-1] == tok.eos_token_id for ids in ended)  # EOS kept or appended
    calls = [json.loads(line) for line in (root / "vllm_calls.jsonl").read_text().splitlines()]
    assert calls[0]["init"]["gpu_memory_utilization"] == 0.3  # sample.vllm.* reach vllm.LLM
    requests = [(p, q) for c in calls[1:] for p, q in zip(c["prompts"], c["params"])]
    assert len(requests) == 96
    for prompt, params in requests:
        assert prompt.count("<image>") == 1
        assert params["n"] == 4 and params["stop_token_ids"] == [tok.eos_token_id]
        # the image placeholder can never be sampled (it would break the scoring forward)
        assert tok.convert_tokens_to_ids("<image>") not in params["allowed_token_ids"]
        assert tok.eos_token_id in params["allowed_token_ids"]
        assert params["temperature"] == 1.0 and params["top_p"] == 1.0
    seeds = {params["seed"] for _, params in requests}
    assert record_seed(42, 0, rows[0]["id"]) % 2**31 in seeds  # each record's own seed
    # the other engine on the same folder: refused, naming the key
    again = subprocess.run(
        _cmd("sample.py", cache, f"sample.out_dir={out}", f"hydra.run.dir={root / 'run_vllm2'}"),
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert again.returncode != 0 and "engine: stored 'vllm', now 'transformers'" in again.stdout + again.stderr


def test_train_py_online_with_the_vllm_stand_in(sampled):
    """``train.py sampling.engine=vllm``: online lists from the engine (tests/fake_vllm), built on
    vllm_readable's copy (the stand-in refuses transformers-5 tower names, as vLLM 0.32 does), its
    weights synced from the policy before steps 1 and 2 (not step 0: it loaded the base) under the
    policy's own names, its prefix cache reset after each sync."""
    root, cache = sampled
    env = script_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "fake_vllm"), env.get("PYTHONPATH", "")])
    env["FAKE_VLLM_LOG"] = str(root / "online_calls.jsonl")
    run_dir = root / "online_vllm"
    cmd = _cmd("train.py", cache, "sampling.engine=vllm", "trainer.max_steps=3", "checkpoint.enabled=false",
               "eval.before=false", "eval.after=false", f"hydra.run.dir={run_dir}")  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    calls = [json.loads(line) for line in (root / "online_calls.jsonl").read_text().splitlines()]
    kinds = [next(iter(c)) for c in calls]
    assert kinds[0] == "init" and "/vllm/" in calls[0]["init"]["model"]  # vllm_readable's copy
    assert kinds[1:] == ["prompts", "load_weights", "reset_prefix_cache", "prompts", "load_weights", "reset_prefix_cache", "prompts"]
    assert calls[0]["init"]["gpu_memory_utilization"] == 0.3  # sampling.vllm.* reach vllm.LLM
    assert all(c["load_weights"] > 0 for c in calls if "load_weights" in c)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["list_counters"]["lists_seen"] == 3 * 4
