"""What is wrong with a data file that ``datasets`` / pyarrow could not read, in perpo's words.

``datasets`` fails a whole split on one bad line, with a pyarrow or pandas message that names
neither the file nor the line (``JSON parse error: Missing a name for object member. in row
0``). Called only after such a failure, :func:`file_problem` reads the file again with the
standard library (JSON Lines, CSV) or pyarrow's own reader (parquet) and returns one sentence
naming the file, the line (or row group) and the fix; :func:`root_cause` is the innermost
exception of a wrapped one, for when no file can be blamed.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

__all__ = ["file_problem", "files_problem", "root_cause"]


def root_cause(err: BaseException) -> BaseException:
    """The innermost ``__cause__`` / ``__context__`` of ``err`` (``datasets`` wraps pyarrow's error)."""
    seen = {id(err)}
    while True:
        inner = err.__cause__ or err.__context__
        if inner is None or id(inner) in seen:
            return err
        seen.add(id(inner))
        err = inner


def file_problem(builder: str, file: str | Path, first: dict | None = None) -> str | None:
    """One sentence on what in ``file`` (read by ``datasets`` builder ``builder``) stops it being
    read, naming the line and the fix; ``None`` when nothing is found. ``first``: the JSON column
    kinds of the split's earlier files (updated)."""
    file = Path(file)
    try:
        if builder == "json":
            return _json_problem(file, {} if first is None else first)
        if builder == "csv":
            return _csv_problem(file)
        if builder == "parquet":
            return _parquet_problem(file)
    except OSError as err:
        return f"{file} cannot be read ({err.strerror or err}): check that it exists and is readable"
    return None


def files_problem(builder: str, files) -> str | None:
    """:func:`file_problem` of the first file that has one; for parquet, also files whose columns
    differ (``datasets`` reads a split's files as one table)."""
    files = [f for f in files if Path(f).is_file()]  # local files only (a hub split's are URLs)
    first: dict = {}  # JSON: column -> (kind, file, where first seen), across the files
    for file in files:
        problem = file_problem(builder, file, first)
        if problem:
            return problem
    if builder == "parquet" and len(files) > 1:
        import pyarrow.parquet as pq

        schema = pq.read_schema(files[0])
        for file in files[1:]:
            other = pq.read_schema(file)
            if set(other.names) != set(schema.names):
                return (
                    f"{file} has columns {', '.join(other.names)}, but {files[0]} has {', '.join(schema.names)}: "
                    "the files of one split need the same columns"
                )
            for name in schema.names:
                a, b = schema.field(name).type, other.field(name).type
                if a != b:
                    return (
                        f"{file}: column {name!r} is {b}, but {a} in {files[0]}: the files of one split need "
                        "the same column types"
                    )
    return None


def _kind(value) -> str | None:
    """The JSON kind of a value as pyarrow types a column (None: null, which fits any column)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    inner = next((k for k in map(_kind, value) if k is not None), None)
    return f"list of {inner}s" if inner else "list"


def _text(file: Path) -> tuple[str | None, str | None]:
    """(text, None) or (None, the problem)."""
    data = file.read_bytes()
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        return None, f"{file}, line {line}: not UTF-8 text (byte {err.start}): save the file as UTF-8"


def _json_problem(file: Path, first: dict) -> str | None:
    text, problem = _text(file)
    if problem:
        return problem
    if not text.strip():
        return f"{file} is empty: give it one JSON object per line"
    if text.lstrip()[:1] in "[{":
        try:  # one JSON document (an array of records, or a single object)
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, list):
            rows = [(f"item {i}", row) for i, row in enumerate(whole)]
            return _rows_problem(file, rows, "item", first)
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as err:
            return (
                f"{file}, line {number}: not valid JSON ({err.msg} at column {err.colno}): "
                "fix or delete that line (JSON Lines: one JSON object per line)"
            )
    return _rows_problem(file, rows, "line", first)


def _rows_problem(file: Path, rows: list, unit: str, first: dict) -> str | None:
    for where, row in rows:
        if not isinstance(row, dict):
            return (
                f"{file}, {where}: a JSON {_kind(row) or 'null'}, not an object: each {unit} must be one "
                'record {"column": value, ...}'
            )
        for column, value in row.items():
            kind = _kind(value)
            if kind is None:
                continue
            seen_kind, seen_file, seen_where = first.setdefault(column, (kind, file, where))
            # within one file datasets reads mixed values (its pandas fallback; the adapters skip the
            # rows that do not fit); the files of one split must agree on each column's type
            if seen_kind != kind and seen_file != file:
                return (
                    f"{file}, {where}: column {column!r} holds a {kind}, but a {seen_kind} in {seen_file}, "
                    f"{seen_where}: give the column one type in every file of the split (or null)"
                )
    return None


def _csv_problem(file: Path) -> str | None:
    text, problem = _text(file)
    if problem:
        return problem
    if not text.strip():
        return f"{file} is empty: give it a header line and one row per line"
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
        for row in reader:
            if len(row) > len(header):
                return (
                    f"{file}, line {reader.line_num}: {len(row)} fields, but the header has {len(header)}: "
                    "quote values that hold a comma, or fix that line"
                )
    except csv.Error as err:
        return f"{file}, line {reader.line_num}: {err}: fix that line"
    return None


def _parquet_problem(file: Path) -> str | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as err:
        return f"{file} is not a readable parquet file ({err}): it is damaged or not parquet; write it again"
    for group in range(reader.num_row_groups):
        try:
            reader.read_row_group(group)
        except (pa.ArrowException, OSError) as err:
            return (
                f"{file}: row group {group} of {reader.num_row_groups} cannot be read ({err}): "
                "the file is damaged; write it again"
            )
    return None
