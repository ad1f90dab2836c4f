"""The reward registry: ``name -> fn(completion, record, **params) -> float | None``, with the
tasks each reward supports (see :mod:`perpo.rewards` for the contract)."""

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
