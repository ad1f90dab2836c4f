"""Online lists from an engine that holds its own copy of the weights (``sampling.engine=vllm``,
perpo.sampling.vllm_engine): before each step's sampling, :class:`PerPOModule` copies the policy's
trained weights into the engine whenever an optimizer step happened since the last copy, so every
step samples from the weights it trains. The real vLLM runs in tests/test_vllm_real.py; here an
engine with vLLM's two calls (``load_weights``, ``generate``) over a separate model copy."""

from __future__ import annotations

import copy

import lightning as L
import torch

from perpo.data.datamodule import RecordDataModule
from perpo.sampling.generation import generate
from perpo.sampling.vllm_engine import policy_weights
from perpo.training.config import ListConfig, OptimConfig, SamplingConfig
from perpo.training.module import PerPOModule
from user_rewards import length_reward


class CopyEngine:
    """vLLM's place in the loop: its own model copy (the checkpoint it loaded), updated only by
    ``load_weights``; ``generate`` samples from that copy and records, per call, the step and
    whether the copy's weights equal the live policy's at that moment."""

    def __init__(self, model, processor):
        self.model, self.processor = copy.deepcopy(model), processor
        self.module: PerPOModule | None = None
        self.loads: list[int] = []
        self.checks: list[tuple[int, bool]] = []

    def load_weights(self, weights):
        params = dict(self.model.named_parameters())
        weights = list(weights)
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)  # a name vLLM would not know fails here
        self.loads.append(len(weights))

    def generate(self, prompts, images, **options):
        live = dict(self.module.policy.named_parameters())
        same = all(torch.equal(p, live[n]) for n, p in self.model.named_parameters())
        self.checks.append((self.module.global_step, same))
        return generate(self.model, self.processor, prompts, images, **options)


def test_each_step_samples_from_the_weights_it_trains(fresh_model, processor, family, task, grounding_records):
    """3 optimizer steps at a large lr: the engine is synced before steps 1 and 2 (not step 0: it
    loaded the base), and at every sampling call its weights are the policy's. Fails without
    the sync: from step 1 on the engine would still hold the base."""
    base = copy.deepcopy(fresh_model)
    engine = CopyEngine(fresh_model, processor)
    lists = ListConfig(listsize=4, min_margin=0.0, sampling=SamplingConfig(1.0, 1.0, 12, seed=0))
    module = PerPOModule(fresh_model, processor, family, task, length_reward, lists=lists, optim=OptimConfig(lr=5e-3), engine=engine)
    engine.module = module
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, RecordDataModule(grounding_records, None, batch_size=2, seed=0))
    assert [step for step, _ in engine.checks] == [0, 1, 2]
    assert all(same for _, same in engine.checks), engine.checks
    every = sum(1 for _ in module.policy.named_parameters())
    assert engine.loads == [every, every]  # frozen weights too: vLLM reloads layer by layer
    moved = max((p - q).abs().max().item() for p, q in zip(module.policy.parameters(), base.parameters()))
    assert moved > 1e-4  # the policy did move: a stale engine would have been caught


def test_lora_weights_are_merged_under_the_base_names_and_unmerged_after(fresh_model, processor, family, task, grounding_records):
    """A LoRA policy: policy_weights gives merged base-named weights (peft's wrapping removed);
    loaded into a plain copy of the base they give the LoRA policy's logits; the policy itself is
    left unmerged (its logits unchanged by the call)."""
    from perpo.models.lora import apply_lora

    plain, untouched = copy.deepcopy(fresh_model), copy.deepcopy(fresh_model)
    policy = apply_lora(fresh_model, r=4, alpha=8, dropout=0.0)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)  # as if trained
    from perpo.listbatch.naive import encode_prefixes
    from perpo.listbatch.packed import batch_logps, build_batch

    prompt = family.prompt_text(grounding_records[0], task)
    batch = build_batch(encode_prefixes(processor, [prompt], [grounding_records[0]["image"]]), [[[5, 6, 7, processor.tokenizer.eos_token_id]]],
                        processor.tokenizer.pad_token_id, layout="naive")  # fmt: skip
    with torch.no_grad():
        before = batch_logps(policy, batch).sum
        weights = policy_weights(policy)
        after = batch_logps(policy, batch).sum
    names = [n for n, _ in weights]
    assert not any("lora_" in n or "base_model" in n or "base_layer" in n or "modules_to_save" in n for n in names)
    params = dict(plain.named_parameters())
    assert sorted(names) == sorted(params)  # every weight, under the plain model's names
    with torch.no_grad():
        for name, tensor in weights:
            params[name].copy_(tensor)
        synced = batch_logps(plain, batch).sum
        unchanged = batch_logps(untouched, batch).sum
    assert torch.equal(before, after)
    assert torch.allclose(synced, before, atol=1e-5)
    assert not torch.allclose(unchanged, before, atol=1e-3)  # the adapter matters: the check is not vacuous
