"""The SFT warm start (perpo.training.warmstart): a multi-task base (``warmstart.mix``), its own
seed (``warmstart.seed``) and the plateau stop (``warmstart.patience``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from perpo.data import make_records
from perpo.listbatch.naive import ground_truth_batch
from perpo.prompting import TaskSpec
from perpo.config import ConfigError, other_task_configs
from perpo.training.warmstart import prepare_base

REPO = Path(__file__).resolve().parents[1]


def compose_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3", job_name="train"):
        return compose(
            config_name="train",
            overrides=[f"paths.root={REPO}", f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides],
        )


COUNTING = TaskSpec("counting", "How many {prompt} are there in the image?", 4)


def test_ground_truth_batch_prompts_each_record_by_its_own_task(processor, family, task):
    """A batch mixing a grounding and a counting record equals, row by row, the two single-task
    batches: each record gets its own task's instruction and answer (a box / the count)."""
    g = make_records("grounding", 1, seed=3)[0]
    c = make_records("counting", 1, seed=3)[0]
    mixed = ground_truth_batch(processor, family, {"grounding": task, "counting": COUNTING}, [g, c])
    alone = [ground_truth_batch(processor, family, spec, [r]) for spec, r in ((task, g), (COUNTING, c))]
    tok = processor.tokenizer
    for row, single in enumerate(alone):
        ids = mixed.input_ids[row][mixed.attention_mask[row].bool()]
        assert torch.equal(ids, single.input_ids[0][single.attention_mask[0].bool()])
    counting_text = tok.decode(mixed.input_ids[1][mixed.attention_mask[1].bool()])
    assert "How many" in counting_text and counting_text.rstrip().endswith(str(c["target"]) + tok.eos_token)


def test_mix_reads_each_task_config_and_names_bad_entries(tmp_path):
    cfg = compose_cfg(tmp_path, "warmstart.mix=[counting,existence]")
    mixed = other_task_configs(cfg, "warmstart.mix")
    assert list(mixed) == ["counting", "existence"]
    assert mixed["counting"].generator.grid == 4 and "How many" in mixed["counting"].instruction
    with pytest.raises(ConfigError, match=r"warmstart.mix.*'grounding'.*main task"):
        other_task_configs(compose_cfg(tmp_path, "warmstart.mix=[grounding]"), "warmstart.mix")
    with pytest.raises(ConfigError, match=r"eval.retention: no task config .*'colour'"):
        other_task_configs(compose_cfg(tmp_path, "eval.retention=[colour]"), "eval.retention")


def test_a_mixed_base_learns_the_mixed_task_and_is_cached_apart(tmp_path):
    """30 SFT steps on grounding + counting: the counting answers' NLL falls well below the
    grounding-only base's (which never saw a counting prompt); the two bases live in different
    cache folders; and ``warmstart.seed`` fixes the base whatever the aligner's ``seed``."""
    from perpo.evaluation.loop import image_dependence
    from perpo.models.loading import load_model
    from perpo.prompting import ChatFamily

    common = [
        "data.sizes.train=256", "data.sizes.val=16", "warmstart.steps=30", "warmstart.stop_at=null",
        "warmstart.batch_size=16", "warmstart.lr=5e-3", "warmstart.warmup_steps=0", "warmstart.seed=7",
    ]  # fmt: skip
    def base(*extra):
        cfg = compose_cfg(tmp_path, *common, *extra)
        from perpo.commands.common import build_splits

        return prepare_base(cfg, build_splits(cfg))

    mixed = base("warmstart.mix=[counting]", "seed=1")
    assert base("warmstart.mix=[counting]", "seed=2") == mixed  # the aligner's seed does not matter
    alone = base()
    assert alone != mixed
    counting = make_records("counting", 32, seed=99, grid=4)
    records = [counting[i] for i in range(len(counting))]
    nll = {}
    for name, path in (("mixed", mixed), ("alone", alone)):
        model, processor = load_model(path)
        nll[name] = image_dependence(model, processor, ChatFamily(processor, "norm2"), COUNTING, records, seed=0)["nll_true_images"]
    # the counting answer is one digit + EOS: ~ln(6) nats per token untrained; the mixed base
    # has learnt the format (digit, then EOS), the grounding-only base expects a box
    assert nll["mixed"] < 0.5 * nll["alone"], nll


def test_the_base_records_its_validation_curve_and_why_it_stopped(tmp_path):
    """warmstart.json beside the weights: steps, the val curve, and the stop reason. A val metric
    that cannot improve (patience 1, validation every 5 steps) stops it on a plateau long before
    the 400-step cap: 2 validations, the second no better than the first."""
    import json

    from perpo.commands.common import build_splits

    cfg = compose_cfg(
        tmp_path, "data.sizes.train=64", "data.sizes.val=8", "warmstart.steps=400", "warmstart.batch_size=8",
        "warmstart.val_every=5", "warmstart.patience=1", "warmstart.stop_at={metric: parse_rate, mode: max, value: null}",
        "warmstart.lr=1e-9",  # nothing moves: parse_rate stays where it starts
    )  # fmt: skip
    base = prepare_base(cfg, build_splits(cfg))
    record = json.loads((base / "warmstart.json").read_text())
    assert record["stopped"] == "plateau" and record["steps"] == 10
    assert [step for step, _ in record["val_history"]] == [5, 10]
    assert record["val_history"][0][1] == record["val_history"][1][1]
    assert record["monitor"] == "val/parse_rate" and record["train_records"] == 64 and record["mix"] == []
    # warmstart.plateau_after: the same flat curve is judged from step 20 on -> 4 validations
    cfg = compose_cfg(
        tmp_path, "data.sizes.train=64", "data.sizes.val=8", "warmstart.steps=400", "warmstart.batch_size=8",
        "warmstart.val_every=5", "warmstart.patience=1", "warmstart.stop_at={metric: parse_rate, mode: max, value: null}",
        "warmstart.lr=1e-9", "warmstart.plateau_after=20",
    )  # fmt: skip
    record = json.loads((prepare_base(cfg, build_splits(cfg)) / "warmstart.json").read_text())
    assert record["stopped"] == "plateau" and [step for step, _ in record["val_history"]] == [5, 10, 15, 20, 25]
    # A second stage (experiment=multitask_base_cooldown): model.path is the first stage's base;
    # its warmstart.json says where it started, at which lr, and keeps the first stage's record.
    first = prepare_base(cfg, build_splits(cfg))
    cfg = compose_cfg(
        tmp_path, f"model.path={first}", "model.build_tiny=false", "data.sizes.train=64", "data.sizes.val=8",
        "warmstart.steps=5", "warmstart.batch_size=8", "warmstart.val_every=5", "warmstart.lr=1e-9",
        "warmstart.stop_at={metric: parse_rate, mode: max, value: null}",
    )  # fmt: skip
    second = json.loads((prepare_base(cfg, build_splits(cfg)) / "warmstart.json").read_text())
    assert second["init"] == str(first) and second["lr"] == 1e-9 and second["steps"] == 5
    assert second["previous"] == record
