"""Small pieces of perpo.commands.train: reward building (registry or the user's own _target_),
the image-use verdict, the cache key, and atomic result writing."""

import json

import pytest
from omegaconf import OmegaConf

from perpo.atomic import write_json_atomic
from perpo.commands.common import build_reward
from perpo.evaluation.loop import uses_image
from perpo.training.warmstart import config_digest


def my_reward(completion, record, *, bonus=0.0):
    """A user's reward living outside perpo: exact match plus a configurable bonus."""
    return min(1.0, float(completion == record["target"]) + bonus)


def test_registered_reward_gets_its_params():
    cfg = OmegaConf.create({"reward": {"name": "iou", "params": {"box_format": "norm2"}}})
    reward = build_reward(cfg)
    record = {"target": [0.0, 0.0, 0.5, 0.5], "width": 64, "height": 64}
    assert reward("[0.00, 0.00, 0.50, 0.50]", record) == pytest.approx(1.0)
    # [0, 0, .5, .25] inside the target: IoU = 0.125 / 0.25 = 0.5
    assert reward("[0.00, 0.00, 0.50, 0.25]", record) == pytest.approx(0.5)
    assert reward("no box here", record) is None


def test_user_reward_from_target_without_touching_perpo():
    cfg = OmegaConf.create(
        {"reward": {"name": "mine", "fn": {"_target_": f"{__name__}.my_reward", "bonus": 0.25}}}
    )
    reward = build_reward(cfg)
    assert reward("abc", {"target": "abc"}) == 1.0
    assert reward("abd", {"target": "abc"}) == 0.25


def test_uses_image_needs_a_relative_gain():
    assert uses_image({"nll_true_images": 0.43, "nll_shuffled_images": 0.78})
    assert not uses_image({"nll_true_images": 0.5555, "nll_shuffled_images": 0.5555})
    assert not uses_image({"nll_true_images": 0.99, "nll_shuffled_images": 1.0})  # 1% < 2%


def test_digest_is_order_independent_and_sensitive():
    assert config_digest({"a": 1, "b": 2}) == config_digest({"b": 2, "a": 1})
    assert config_digest({"a": 1}) != config_digest({"a": 2})


def test_write_json_atomic_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "results.json"
    write_json_atomic(target, {"x": 1})
    write_json_atomic(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]


def test_param_groups_split_vision_projector_and_rest_and_freeze_the_tower():
    import torch

    from perpo.models.parts import param_groups

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_tower = torch.nn.Linear(2, 2)
            self.multi_modal_projector = torch.nn.Linear(2, 2)
            self.language_model = torch.nn.Linear(2, 2)

    m = Tiny()
    groups = param_groups(m, lr=1e-3, projector_lr=5e-4, vision_lr=1e-4)
    assert [g["lr"] for g in groups] == [1e-3, 5e-4, 1e-4]
    assert [len(g["params"]) for g in groups] == [2, 2, 2]

    m = Tiny()
    groups = param_groups(m, lr=1e-3, vision_lr=0)  # frozen: not in the optimizer, no grads
    assert [g["lr"] for g in groups] == [1e-3, 1e-3]
    assert not any(p.requires_grad for p in m.vision_tower.parameters())
    assert all(p.requires_grad for p in m.language_model.parameters())
