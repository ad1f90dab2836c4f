"""Records (the schema every stage reads) and deterministic synthetic tasks."""

from perpo.data.records import TASKS, features_for, validate_record
from perpo.data.synthetic import make_records, make_splits, preview_grid

__all__ = ["TASKS", "features_for", "make_records", "make_splits", "preview_grid", "validate_record"]
