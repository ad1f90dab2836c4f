"""What train.py, sample.py and evaluate.py share: validate the config, run, and turn the errors
a user can fix (a wrong combination, a checkpoint that cannot be loaded, data or stored lists
that do not fit, nothing to resume) into one message and exit code 2.

In a multirun the error is raised instead of exiting: Hydra then records the job as failed and
runs the others (``perpo.reporting.sweep_summary`` lists which failed and why).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from perpo.config import ConfigError, validate


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _fail(err: Exception) -> None:
    print(f"perpo: {err}", file=sys.stderr)
    if _multirun():
        raise err
    sys.exit(2)


def run_guarded(cfg: DictConfig, job: Callable[[DictConfig], Any]) -> Any:
    """``job(cfg)`` after start-up validation; user-fixable errors exit 2 with ``perpo: <message>``."""
    try:
        validate(cfg)
    except ConfigError as err:
        _fail(err)
    # heavy imports only once the config is valid
    from perpo.training.checkpointing import ResumeError
    from perpo.data.adapters import DataError
    from perpo.models.loading import ModelLoadError
    from perpo.data.stored_lists import ListsError
    from perpo.training.runtime import print_each_line_once

    print_each_line_once()

    try:
        return job(cfg)
    except (ConfigError, ModelLoadError, ListsError, ResumeError, DataError) as err:  # a config value found unusable late
        _fail(err)
