"""What train.py and evaluate.py share: validate the config, run, and turn the errors a user can
fix (a wrong combination, a checkpoint that cannot be loaded, stored lists that do not fit) into one message and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from perpo.config import ConfigError, validate


def run_guarded(cfg: DictConfig, job: Callable[[DictConfig], Any]) -> Any:
    """``job(cfg)`` after start-up validation; user-fixable errors exit 2 with ``perpo: <message>``."""
    try:
        validate(cfg)
    except ConfigError as err:
        print(f"perpo: {err}", file=sys.stderr)
        sys.exit(2)
    # heavy imports only once the config is valid
    from perpo.models.loading import ModelLoadError
    from perpo.checkpointing import ResumeError
    from perpo.data.adapters import DataError
    from perpo.offline import ListsError

    try:
        return job(cfg)
    except (ModelLoadError, ListsError, ResumeError, DataError) as err:
        print(f"perpo: {err}", file=sys.stderr)
        sys.exit(2)
