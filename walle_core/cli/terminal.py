"""The one place the CLI writes to the terminal.

Commands never print directly: human output goes through rich on stdout, errors and
progress go to stderr, and ``--json`` output is plain ``json.dumps`` on stdout so scripts
can parse it (rich would wrap and colour it). Spinners and progress bars only appear on a
TTY, so piped output and test runners see nothing but the result.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

T = TypeVar("T")


class Terminal:
    def __init__(self) -> None:
        # file=None: rich resolves sys.stdout / sys.stderr at write time, which keeps
        # click's CliRunner (it swaps those streams) working.
        self.out = Console(highlight=False)
        self.err = Console(stderr=True, highlight=False)

    def display(self, text: str = "") -> None:
        self.out.print(text, markup=False)

    def display_table(self, title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
        self.out.print(table)

    def display_error(self, message: str) -> None:
        one_line = " ".join(str(message).split())
        self.err.print(f"[bold red]error:[/] {escape(one_line)}", soft_wrap=True)

    def print_json(self, data: Any) -> None:
        sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")
        sys.stdout.flush()

    def status(self, message: str) -> contextlib.AbstractContextManager[Any]:
        """A spinner while something slow runs; nothing when stderr is not a terminal."""
        if self.err.is_terminal:
            return self.err.status(message)
        return contextlib.nullcontext()

    def track(self, items: Sequence[T], description: str) -> Iterator[T]:
        """Iterate ``items`` with a progress bar on a terminal, silently otherwise."""
        if not self.err.is_terminal:
            return iter(items)
        from rich.progress import track

        return iter(track(items, description=description, console=self.err, transient=True))


def _json_default(value: Any) -> Any:
    """NumPy scalars and dtypes appear in reports; everything else is a bug."""
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "name"):
        return value.name
    raise TypeError(f"[cli] cannot serialise {type(value).__name__} to JSON")
