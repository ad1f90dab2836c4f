"""Reward registry: ``name -> fn(completion, record, **params) -> float | None``.

Contract (see docs/ARCHITECTURE.md): a reward returns a float in [0, 1], or ``None`` when the
completion could not be parsed (the caller scores it 0 and counts it). A reward never raises on
model output (garbage, empty string, unicode, huge numbers). ``record`` is a mapping with at least
``target``, ``width`` and ``height``.

Each reward is registered with the tasks it supports (``REWARD_TASKS``), so configuration can
reject e.g. an ``edit`` reward on a grounding dataset at start-up.
"""

from perpo.rewards import counting, existence, grounding, text  # noqa: F401  (each registers its rewards)
from perpo.rewards.registry import REWARD_TASKS, REWARDS, RewardFn, get_reward, register_reward, rewards_for_task

__all__ = ["REWARDS", "REWARD_TASKS", "RewardFn", "register_reward", "get_reward", "rewards_for_task"]
