"""vLLM for real (issue 15, part 1): the community CPU build ``vllm-cpu`` 0.32 in a venv of its own,
built and run by ``.ci/try_vllm.sh`` (docs/results/vllm_cpu.md). Skipped wherever vLLM is not
installed (perpo's own .venv) or is the stand-in of tests/fake_vllm.

- ``sample.py sample.engine=vllm`` on the embedded tiny LLaVA writes complete lists;
- vLLM's log-probs of its answers equal perpo's transformers scorer's on the same ids;
- the rewards of vLLM's samples and of the transformers engine's, same model and settings, are
  one distribution (two-sample Kolmogorov-Smirnov on answers, permutation test on record means).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from subprocess_runs import REPO, WARM_START, script_env

# vLLM's CPU backend: a small KV cache, no thread pinning, the engine in this process.
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
for key, value in VLLM_ENV.items():
    os.environ.setdefault(key, value)
vllm = pytest.importorskip("vllm")
if "fake_vllm" in str(getattr(vllm, "__file__", "")):
    pytest.skip("tests/fake_vllm is the stand-in, not vLLM", allow_module_level=True)

RECORDS, N = 96, 4
BUDGET = [
    *WARM_START, f"data.sizes.train={RECORDS}", "data.sizes.val=4", "data.sizes.test=8", "data.batch_size=4",
    f"listsize={N}", "data.min_margin=0.0", "sample.min_margin=0.0", "eval.batch_size=8", "sample.chunk_size=32",
    "sample.batch_size=8",
]  # fmt: skip
VLLM_OPTIONS = ["sample.engine=vllm", "+sample.vllm.enforce_eager=true", "sample.vllm.max_model_len=512", "model.dtype=float32"]


def _rows(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for shard in sorted((out / "data").glob("chunk-*.parquet")) for r in pq.read_table(shard).to_pylist()]


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    """The same sample.py run with each engine (the warm start cached once)."""
    root = tmp_path_factory.mktemp("vllm_real")
    out = {}
    for engine, extra in (("transformers", ["model.dtype=float32"]), ("vllm", VLLM_OPTIONS)):
        env = script_env(**VLLM_ENV)
        cmd = [sys.executable, "sample.py", f"paths.cache_dir={root / 'cache'}", *BUDGET, *extra,
               f"sample.out_dir={root / engine}", f"hydra.run.dir={root / ('run_' + engine)}"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        out[engine] = root / engine
    return root, out


def test_sample_py_with_vllm_writes_complete_lists(lists):
    _, out = lists
    summary = json.loads((out["vllm"] / "summary.json").read_text())
    assert summary["complete"] and summary["records"] == RECORDS and sum(summary["hist"]) == RECORDS * N
    assert json.loads((out["vllm"] / "meta.json").read_text())["engine"] == "vllm"
    rows = _rows(out["vllm"])
    assert len(rows) == summary["kept"] > 0
    for row in rows:
        assert len(row["answers"]) == len(row["answer_ids"]) == len(row["ref_logps"]) == len(row["rewards"]) == N
        assert all(lp < 0 for lp in row["ref_logps"])


def test_the_two_engines_rewards_are_one_distribution(lists):
    """Not equality (different random streams): no evidence of a difference at the 1% level."""
    import numpy as np
    from scipy.stats import ks_2samp

    _, out = lists
    rewards = {e: [r["rewards"] for r in _rows(out[e])] for e in out}
    a, b = (np.array([x for row in rewards[e] for x in row]) for e in ("vllm", "transformers"))
    assert a.std() > 0 and b.std() > 0  # the warm-started tiny model's answers differ in reward
    ks = ks_2samp(a, b)
    means = [np.array([np.mean(row) for row in rewards[e]]) for e in ("vllm", "transformers")]
    pooled, k = np.concatenate(means), len(means[0])
    observed = means[0].mean() - means[1].mean()
    rng = np.random.default_rng(0)
    perms = np.array([(lambda p: p[:k].mean() - p[k:].mean())(rng.permutation(pooled)) for _ in range(5000)])
    p_perm = float(np.mean(np.abs(perms) >= abs(observed)))
    print(f"rewards vllm mean {a.mean():.4f} sd {a.std():.4f} n {a.size}; transformers mean {b.mean():.4f} "
          f"sd {b.std():.4f} n {b.size}; KS D {ks.statistic:.4f} p {ks.pvalue:.4f}; record means diff {observed:+.4f} "
          f"permutation p {p_perm:.4f}")  # fmt: skip
    assert ks.pvalue > 0.01 and p_perm > 0.01


@pytest.mark.parametrize("family", ["tiny", "llava_next"])
def test_vllm_logprobs_equal_perpos_scorer(lists, family, monkeypatch):
    """vLLM's cumulative log-prob of each sampled answer (raw, temperature 1) against perpo's
    transformers scorer on the same ids, fp32: equal to 1e-4 per answer. ``tiny``: the warm-started
    LLaVA sample.py used (saved by transformers 5: vLLM gets :func:`vllm_readable`'s copy);
    ``llava_next``: the tiny random-init LLaVA-NeXT of perpo.testing.tiny_families (anyres crops).
    Qwen2-VL is not here: vLLM builds its whole transformers processor, video processor included,
    which needs torchvision (docs/results/vllm_cpu.md)."""
    from PIL import Image

    from perpo.models.loading import load_model
    from perpo.prompting import ChatFamily, TaskSpec
    from perpo.sampling.vllm_engine import build_engine

    root, out = lists
    if family == "tiny":
        base = json.loads((out["vllm"] / "meta.json").read_text())["base"]
    else:
        from perpo.testing import tiny_families

        # vLLM's CPU attention kernels take head sizes of 32 and up; the tiny families' text head is 16
        monkeypatch.setitem(tiny_families.TEXT, "heads", 2)
        base = tiny_families.save_tiny_family(family, root / family)
    model, processor = load_model(base)
    model.eval()
    prompt = ChatFamily(processor).prompt_text({"prompt": "red circle"}, TaskSpec("grounding", "Where is the {prompt}?", 24))
    image = Image.new("RGB", (64, 64), (200, 10, 10))
    engine = build_engine(base, root / "cache", model, processor, dtype="float32", options={"enforce_eager": True, "max_model_len": 1024})
    answers, theirs = _vllm_samples(engine, prompt, image)
    ours = _perpo_logps(model, processor, prompt, image, answers)
    diffs = [abs(a - b) for a, b in zip(theirs, ours)]
    print(f"{family}: vLLM / perpo log-probs:", [f"{a:.4f}/{b:.4f}" for a, b in zip(theirs, ours)])
    assert len(diffs) == 8 and max(diffs) < 1e-4, diffs


def _vllm_samples(engine, prompt, image, n=8):
    """n answers vLLM samples (seeded) with their cumulative log-probs (raw, temperature 1)."""
    from vllm import SamplingParams

    params = SamplingParams(n=n, temperature=1.0, top_p=1.0, max_tokens=24, seed=1, logprobs=0, allowed_token_ids=engine.allowed)
    done = engine.llm.generate([{"prompt": prompt, "multi_modal_data": {"image": image}}], [params], use_tqdm=False)[0].outputs
    return [list(c.token_ids) for c in done], [c.cumulative_logprob for c in done]


def _perpo_logps(model, processor, prompt, image, answers):
    import torch

    from perpo.listbatch.naive import encode_prefixes
    from perpo.listbatch.packed import batch_logps, build_batch

    with torch.no_grad():
        batch = build_batch(encode_prefixes(processor, [prompt], [image]), [answers], processor.tokenizer.pad_token_id, layout="naive")
        return batch_logps(model, batch).sum[0].tolist()


def test_online_perpo_with_vllm_trains_and_vllm_holds_the_policy_weights(lists):
    """Online PerPO with vLLM drawing the lists (in-process, 2 optimizer steps at a large lr), then
    the policy's trained weights synced into vLLM (PerPOModule does this before each step's
    sampling; the module-level timing is pinned by tests/test_online_engine.py): vLLM's log-probs
    of fixed answers equal perpo's scorer's on the trained policy (1e-4) and differ from the base's."""
    import copy

    import lightning as L
    from PIL import Image
    from user_rewards import length_reward

    from perpo.data import make_records
    from perpo.data.datamodule import RecordDataModule
    from perpo.models.loading import load_model
    from perpo.prompting import ChatFamily, TaskSpec
    from perpo.sampling.vllm_engine import build_engine, policy_weights
    from perpo.training.config import ListConfig, OptimConfig, SamplingConfig
    from perpo.training.module import PerPOModule

    root, out = lists
    base = json.loads((out["vllm"] / "meta.json").read_text())["base"]
    policy, processor = load_model(base)
    untouched = copy.deepcopy(policy).eval()
    engine = build_engine(base, root / "cache", policy, processor, dtype="float32", options={"enforce_eager": True, "max_model_len": 512})
    task = TaskSpec("grounding", "Where is the {prompt}? Answer with a box.", 24)
    family = ChatFamily(processor)
    lists_cfg = ListConfig(listsize=4, min_margin=0.0, sampling=SamplingConfig(1.0, 1.0, 24, seed=0))
    module = PerPOModule(policy, processor, family, task, length_reward, lists=lists_cfg, optim=OptimConfig(lr=5e-3), engine=engine)
    records = make_records("grounding", 8, seed=3)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, RecordDataModule([records[i] for i in range(8)], None, batch_size=4, seed=0))
    assert module._engine_step == 1 and module.counters["lists_seen"] == 8
    engine.load_weights(policy_weights(module.policy))
    module.policy.eval()
    prompt = family.prompt_text({"prompt": "red circle"}, task)
    image = Image.new("RGB", (64, 64), (200, 10, 10))
    answers, theirs = _vllm_samples(engine, prompt, image)
    ours = _perpo_logps(module.policy, processor, prompt, image, answers)
    base_logps = _perpo_logps(untouched, processor, prompt, image, answers)
    print("online: vLLM / trained policy / base log-probs:", [f"{a:.4f}/{b:.4f}/{c:.4f}" for a, b, c in zip(theirs, ours, base_logps)])
    assert max(abs(a - b) for a, b in zip(theirs, ours)) < 1e-4
    assert max(abs(a - b) for a, b in zip(theirs, base_logps)) > 1e-3


def test_train_py_online_with_vllm_runs_end_to_end(lists):
    """``train.py sampling.engine=vllm``: online PerPO whose lists vLLM draws, to results.json."""
    root, _ = lists
    run_dir = root / "online"
    cmd = [sys.executable, "train.py", f"paths.cache_dir={root / 'cache'}", *BUDGET, "trainer.max_steps=3",
           "sampling.engine=vllm", "+sampling.vllm.enforce_eager=true", "sampling.vllm.max_model_len=512",
           "model.dtype=float32", "+reward.fn._target_=tests.user_rewards.length_reward", f"hydra.run.dir={run_dir}",
           "checkpoint.enabled=false", "eval.image_check=false"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=script_env(**VLLM_ENV), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["list_counters"]["lists_seen"] == 3 * 4 and results["list_counters"]["lists_kept"] > 0
