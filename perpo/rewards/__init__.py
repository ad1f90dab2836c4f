"""Reward registry: ``name -> fn(completion, record, **params) -> float | None``.

Contract (see docs/ARCHITECTURE.md): a reward returns a float in [0, 1], or ``None`` when the
completion could not be parsed (the caller scores it 0 and counts it). A reward never raises on
model output (garbage, empty string, unicode, huge numbers). ``record`` is a mapping with at least
``target``, ``width`` and ``height``.

Each reward is registered with the tasks it supports (``REWARD_TASKS``), so configuration can
reject e.g. an ``edit`` reward on a grounding dataset at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Optional, Protocol

__all__ = ["REWARDS", "REWARD_TASKS", "RewardFn", "register_reward", "get_reward", "rewards_for_task"]


class RewardFn(Protocol):
    def __call__(self, completion: str, record: Mapping, **params) -> Optional[float]: ...


REWARDS: dict[str, Callable[..., Optional[float]]] = {}
REWARD_TASKS: dict[str, tuple[str, ...]] = {}


def register_reward(name: str, tasks: tuple[str, ...] | list[str] = ()):
    """Decorator registering ``fn`` as reward ``name`` usable for ``tasks``."""
    tasks = tuple(tasks)

    def decorator(fn):
        if name in REWARDS and REWARDS[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        REWARD_TASKS[name] = tasks
        return fn

    return decorator


def get_reward(name: str) -> Callable[..., Optional[float]]:
    """The reward function registered as ``name``."""
    try:
        return REWARDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown reward {name!r}; known rewards: {', '.join(sorted(REWARDS))}") from None


def rewards_for_task(task: str) -> list[str]:
    """Names of the rewards that support ``task``."""
    return sorted(name for name, tasks in REWARD_TASKS.items() if task in tasks)


# Import the submodules so that their rewards register themselves.
from perpo.rewards import counting, grounding, text  # noqa: E402,F401
