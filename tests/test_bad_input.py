"""Broken input ends in perpo's own words: the file (and line) at fault and the fix, as one of the
errors ``perpo.commands.cli`` prints as ``perpo: <message>`` with exit code 2 -- never a pyarrow,
torch or transformers message that names neither.

One test per kind, calling the loaders directly; one ``train.py`` run checks the command line.
Rows that can be skipped safely (a missing image, a 3-number box, a null column) are skipped and
counted by the adapters (tests/test_adapters.py).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image
from subprocess_runs import REPO, script_env

from perpo.data.adapters import DataError, load_split
from perpo.data.stored_lists import ListsError, lists_meta, load_lists
from perpo.models.loading import ModelLoadError, load_model
from perpo.training.checkpointing import AtomicCheckpointIO, ResumeError, check_same_model, resume_path


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def columns_cfg(path: Path, tmp_path: Path) -> dict:
    return {"adapter": "columns", "path": str(path), "options": {"cache_dir": str(tmp_path / "hf-cache")}}


GOOD = json.dumps({"image": "a.png", "prompt": "dogs", "target": 3})


# ----- data files -------------------------------------------------------------------------------
def test_a_jsonl_line_that_is_not_json_is_named(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    file = tmp_path / "rows.jsonl"
    file.write_text(f"{GOOD}\n{GOOD}\n{{\"image\": \"a.png\", \"prompt\": dogs}}\n{GOOD}\n")
    with pytest.raises(DataError) as err:
        load_split(columns_cfg(file, tmp_path), "train", task="counting")
    assert f"{file}, line 3: not valid JSON" in str(err.value)
    assert "fix or delete that line" in str(err.value)


def test_a_column_whose_type_differs_between_the_files_of_a_split_is_named(tmp_path):
    """Within one file datasets reads mixed values (a row that does not fit is skipped); across
    the files of one split pyarrow cannot cast them."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png())
    (src / "train-0.jsonl").write_text(f"{GOOD}\n")
    (src / "train-1.jsonl").write_text(f"{GOOD}\n" + json.dumps({"image": "a.png", "prompt": "dogs", "target": [1, 2]}) + "\n")
    with pytest.raises(DataError) as err:
        load_split(columns_cfg(src, tmp_path), "train", task="counting")
    assert (
        f"{src / 'train-1.jsonl'}, line 2: column 'target' holds a list of numbers, but a number in "
        f"{src / 'train-0.jsonl'}, line 1" in str(err.value)
    )


def test_a_csv_line_with_too_many_fields_is_named(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    file = tmp_path / "rows.csv"
    file.write_text("image,prompt,target\na.png,dogs,3\na.png,dogs, cats,3\n")
    with pytest.raises(DataError) as err:
        load_split(columns_cfg(file, tmp_path), "train", task="counting")
    assert f"{file}, line 3: 4 fields, but the header has 3" in str(err.value)


def test_a_damaged_parquet_file_is_named(tmp_path):
    good = datasets.Dataset.from_dict({"image": ["a.png"], "prompt": ["dogs"], "target": [3]})
    (tmp_path / "src" / "data").mkdir(parents=True)
    good.to_parquet(str(tmp_path / "src" / "data" / "train-00000-of-00002.parquet"))
    bad = tmp_path / "src" / "data" / "train-00001-of-00002.parquet"
    good.to_parquet(str(bad))
    bad.write_bytes(bad.read_bytes()[:40])  # truncated: the footer is gone
    with pytest.raises(DataError) as err:
        load_split(columns_cfg(tmp_path / "src", tmp_path), "train", task="counting")
    assert f"{bad} is not a readable parquet file" in str(err.value)


# ----- stored lists -----------------------------------------------------------------------------
def test_a_damaged_stored_lists_shard_is_named(tmp_path):
    (tmp_path / "data").mkdir()
    shard = tmp_path / "data" / "chunk-00000.parquet"
    shard.write_bytes(b"PAR1 not really")
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ListsError) as err:
        load_lists(tmp_path)
    assert f"{shard} is not a readable parquet file" in str(err.value)
    assert "run the same sample.py command again" in str(err.value)


def test_a_damaged_meta_json_is_named(tmp_path):
    (tmp_path / "meta.json").write_text('{"num_records": 8, "chunk')
    with pytest.raises(ListsError, match=f"{tmp_path / 'meta.json'} cannot be read"):
        lists_meta(tmp_path)


# ----- model folders ----------------------------------------------------------------------------
def test_an_empty_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model.path='.*' is an empty folder: point it at a checkpoint folder"):
        load_model(tmp_path)


def test_a_model_folder_with_a_corrupt_config(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llava", ')
    with pytest.raises(ModelLoadError, match="config.json is not valid JSON .*: it is damaged; download it again"):
        load_model(tmp_path)


def test_a_text_only_model_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ModelLoadError, match=r"holds a 'llama' model \(LlamaForCausalLM\), not a vision-language model"):
        load_model(tmp_path)


def test_a_file_as_model_path(tmp_path):
    file = tmp_path / "last.ckpt"
    file.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"is a file; it must be a checkpoint folder.*ckpt_path=<file>"):
        load_model(file)


def test_a_truncated_weights_file(tiny_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_dir, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match=r"model.safetensors is truncated: .*download it again"):
        load_model(copy)


# ----- checkpoints to resume from ------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path) -> Path:
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(64)}, "global_step": 2}, path)
    return path


def test_resume_from_a_truncated_checkpoint(checkpoint):
    checkpoint.write_bytes(checkpoint.read_bytes()[:-200])
    with pytest.raises(ResumeError, match=f"resume=true: {checkpoint} is damaged, e.g. truncated"):
        resume_path(checkpoint.parents[1], True, None)


def test_resume_from_a_file_that_is_not_a_checkpoint(checkpoint, tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("step 400: loss 0.3\n")
    with pytest.raises(ResumeError, match=f"ckpt_path={text} is not a checkpoint \\(not a torch file"):
        resume_path(tmp_path / "run", False, str(text))
    other = tmp_path / "weights.pt"  # a torch file, but not a Lightning checkpoint
    torch.save([torch.zeros(2)], other)
    assert resume_path(tmp_path, False, str(other)) == str(other)
    with pytest.raises(ResumeError, match="not a checkpoint train.py wrote"):
        AtomicCheckpointIO().load_checkpoint(other)


def test_a_damaged_shard_in_a_folder_checkpoint_is_named(tmp_path):
    """A DeepSpeed folder checkpoint (last.ckpt/checkpoint/*.pt) with one shard cut short: the
    shard is named (before: the folder passed, and DeepSpeed's loader failed deep inside)."""
    folder = tmp_path / "run" / "checkpoints" / "last.ckpt"
    (folder / "checkpoint").mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(64)}}, folder / "checkpoint" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": {"m": torch.zeros(64)}}, folder / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (folder / "latest").write_text("checkpoint")
    assert resume_path(tmp_path / "run", True, None) == str(folder)  # whole: accepted
    shard = folder / "checkpoint" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ResumeError, match=r"resume=true: .*last.ckpt: its shard checkpoint/zero_pp_rank_0_mp_rank_00_optim_states.pt is damaged"):
        resume_path(tmp_path / "run", True, None)


def test_a_checkpoint_of_another_model_is_named_by_its_first_difference():
    own = {"policy.a": torch.zeros(2, 3), "policy.b": torch.zeros(4), "reference.a": torch.zeros(2, 3)}
    check_same_model({"policy.a": torch.ones(2, 3), "policy.b": torch.ones(4)}, own)  # same shapes: fine
    check_same_model({}, own)  # DeepSpeed: weights in its own files, nothing to compare here
    with pytest.raises(ResumeError, match=r"policy.b has shape \(5,\) there and \(4,\) here; resume with the model"):
        check_same_model({"policy.a": torch.ones(2, 3), "policy.b": torch.ones(5)}, own)
    with pytest.raises(ResumeError, match=r"1 parameter\(s\) missing, 1 unknown: this model's 'policy.b' is not in it; it holds 'policy.lora_b'"):
        check_same_model({"policy.a": torch.ones(2, 3), "policy.lora_b": torch.ones(4)}, own)


def test_evaluate_names_eval_checkpoint_not_model_path(tmp_path):
    """evaluate.py eval.checkpoint=<an empty folder>: the message names the key the user set
    (before: it said model.path=..., a key they never touched)."""
    empty = tmp_path / "model"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"^eval.checkpoint='.*model' is an empty folder"):
        load_model(empty, key="eval.checkpoint")
    proc = subprocess.run(
        [sys.executable, "evaluate.py", f"eval.checkpoint={empty}", f"hydra.run.dir={tmp_path / 'run'}",
         f"paths.cache_dir={tmp_path / 'cache'}", "data.sizes.test=2"],
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"perpo: eval.checkpoint='{empty}' is an empty folder" in proc.stderr and "Traceback" not in proc.stderr


# ----- the command line ---------------------------------------------------------------------------
def test_train_py_with_a_damaged_checkpoint_exits_2_in_perpo_words(tmp_path):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 100)  # a zip's first bytes, then nothing
    proc = subprocess.run(
        [sys.executable, "train.py", f"ckpt_path={bad}", f"hydra.run.dir={tmp_path / 'run'}",
         f"paths.cache_dir={tmp_path / 'cache'}", "warmstart.enabled=false", "data.sizes.train=4",
         "data.sizes.val=2", "data.sizes.test=2", "trainer.max_steps=1"],
        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"perpo: ckpt_path={bad} is damaged" in proc.stderr


# ----- config values ------------------------------------------------------------------------------
def test_a_reward_function_that_cannot_be_imported():
    from omegaconf import OmegaConf

    from perpo.commands.common import build_reward
    from perpo.config import ConfigError

    cfg = OmegaConf.create({"reward": {"name": "mine", "fn": {"_target_": "no_such_module.length_reward"}}})
    with pytest.raises(ConfigError, match=r"reward.fn._target_='no_such_module.length_reward' cannot be used"):
        build_reward(cfg)
