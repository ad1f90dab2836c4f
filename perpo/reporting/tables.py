"""The one way perpo draws a table: markdown for files, rich for the console.

Every table perpo writes (eval.md, report.md, the paper tables, the list-size table, the sweep
summary) and prints (the before/after table of a run, the report's summary) goes through these
two functions, so they share one look: a left-aligned first column, the rest right-aligned
(``numeric=False``: all left-aligned)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], *, label_columns: int = 1, numeric: bool = True) -> str:
    """A GitHub markdown table (no trailing newline): ``label_columns`` left-aligned columns,
    then right-aligned ones when ``numeric``."""
    header = list(header)
    align = ["---"] * label_columns + [("---:" if numeric else "---")] * (len(header) - label_columns)
    lines = [_row(header), "|" + "|".join(align) + "|", *(_row(row) for row in rows)]
    return "\n".join(lines)


def _row(cells: Sequence) -> str:
    """``| a | b |``; an empty cell is ``| |``."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """The same table on the console (rich): first column left, the rest right-aligned."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    Console().print(table)
