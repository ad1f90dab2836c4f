"""Shared fixtures: the embedded tiny VLM (built once per session), records, task and family.

Expensive things are session-scoped. Tests that mutate a model (optimizer steps, backward,
train/eval switches they do not undo) must work on ``copy.deepcopy(model)`` -- the
``fresh_model`` fixture hands out such a copy.
"""

from __future__ import annotations

import copy
import os

import pytest


def pytest_configure(config):
    """Under pytest-xdist (the README's test command: one worker per core) each worker keeps to one
    intra-op thread, as the child runs do (tests/subprocess_runs.script_env): workers each using
    every core's threads oversubscribe the CPU, and OpenMP's waiting threads then slow all of them
    many times over."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)

GROUNDING_INSTRUCTION = (
    "Please provide the bounding box coordinate of the region this sentence describes: {prompt}"
)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A folder holding the embedded tiny LLaVA written by ``ensure_tiny``."""
    from perpo.models.loading import ensure_tiny

    path = tmp_path_factory.mktemp("tiny")
    return ensure_tiny(path)


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """``(model, processor)`` loaded from ``tiny_dir``; model in eval mode. Do not mutate it."""
    from perpo.models.loading import load_model

    model, processor = load_model(tiny_dir)
    model.eval()
    return model, processor


@pytest.fixture
def fresh_model(tiny):
    """A deep copy of the session model, free to be trained / mutated by one test."""
    return copy.deepcopy(tiny[0])


@pytest.fixture(scope="session")
def processor(tiny):
    return tiny[1]


@pytest.fixture(scope="session")
def grounding_records():
    """A few grounding records (list of dicts, PIL images) from the synthetic generator."""
    from perpo.data import make_records

    ds = make_records("grounding", 6, seed=1)
    return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="session")
def task():
    from perpo.prompting import TaskSpec

    return TaskSpec("grounding", GROUNDING_INSTRUCTION, 32)


@pytest.fixture(scope="session")
def family(processor):
    from perpo.prompting import ChatFamily

    return ChatFamily(processor, "norm2")
