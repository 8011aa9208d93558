"""Progress display: a rich progress bar on a terminal, one plain line per step elsewhere (CI logs)."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class Reporter:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.interactive = console.is_terminal and not quiet

    @contextmanager
    def task(self, description: str, total: int):
        """Yields ``advance(n=1, info="")``."""
        if self.quiet:
            yield lambda n=1, info="": None
            return
        if not self.interactive:
            done = [0]

            def advance(n: int = 1, info: str = "") -> None:
                done[0] += n
                print(f"{description}: {done[0]}/{total} {info}".rstrip(), file=sys.stderr, flush=True)

            yield advance
            return
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
        with Progress(*columns, console=console, transient=False) as progress:
            tid = progress.add_task(description, total=total, info="")

            def advance(n: int = 1, info: str = "") -> None:
                progress.update(tid, advance=n, info=info)

            yield advance

    def log(self, message: str) -> None:
        if not self.quiet:
            console.print(message, highlight=False)
