"""perpo.sampling.vllm_engine.vllm_readable: the checkpoint folder vLLM can load. transformers 5
saves LLaVA's CLIP tower as ``vision_tower.embeddings.*``; vLLM 0.32's loader (and the hub's
llava-hf checkpoints) have ``vision_tower.vision_model.embeddings.*`` (docs/results/vllm_cpu.md,
blocker 5). Real vLLM runs in tests/test_vllm_real.py (its own venv, .ci/try_vllm.sh)."""

from __future__ import annotations

import json
import shutil

import torch
from safetensors import safe_open

from perpo.sampling.vllm_engine import _tensor_names, vllm_readable


def test_a_transformers5_llava_gets_a_renamed_copy_that_loads_to_the_same_weights(tiny_dir, tiny, tmp_path):
    names = _tensor_names(tiny_dir / "model.safetensors")
    assert any(n.startswith("vision_tower.embeddings.") for n in names)  # what transformers 5 wrote
    copy = vllm_readable(tiny_dir, tmp_path / "cache")
    assert copy.parent == tmp_path / "cache" / "vllm" and copy != tiny_dir
    renamed = _tensor_names(copy / "model.safetensors")
    assert len(renamed) == len(names)
    vision = [n for n in renamed if n.startswith("vision_tower.")]
    assert vision and all(n.startswith("vision_tower.vision_model.") for n in vision)
    assert {n for n in renamed if not n.startswith("vision_tower.")} == {n for n in names if not n.startswith("vision_tower.")}
    with safe_open(str(tiny_dir / "model.safetensors"), "pt") as a, safe_open(str(copy / "model.safetensors"), "pt") as b:
        name = next(n for n in names if n.startswith("vision_tower.embeddings."))
        assert torch.equal(a.get_tensor(name), b.get_tensor(name.replace("vision_tower.", "vision_tower.vision_model.", 1)))
    assert (copy / "tokenizer.json").exists() and json.loads((copy / "config.json").read_text()) == json.loads((tiny_dir / "config.json").read_text())
    # transformers reads the hub's names too: the copy is the same model
    from perpo.models.loading import load_model

    model, _ = load_model(copy)
    original = dict(tiny[0].named_parameters())
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
    # cached: the second call reuses the copy, and a copy is never made of a copy
    assert vllm_readable(tiny_dir, tmp_path / "cache") == copy
    assert vllm_readable(copy, tmp_path / "cache") == copy
    assert not list((tmp_path / "cache" / "vllm").glob("*.partial"))


def test_a_hub_id_or_a_checkpoint_vllm_reads_is_given_as_is(tiny_dir, tmp_path):
    assert str(vllm_readable("llava-hf/llava-1.5-7b-hf", tmp_path)) == "llava-hf/llava-1.5-7b-hf"
    hub_like = vllm_readable(tiny_dir, tmp_path / "cache")  # the hub's names already
    other = tmp_path / "other"
    shutil.copytree(hub_like, other)
    assert vllm_readable(other, tmp_path / "cache2") == other
