"""Terminal output for the CLI: where each kind of text goes, and Rich progress bars.

Without ``--json`` tables go to stdout; with it, stdout carries only the JSON document and every
other line goes to stderr. Warnings and errors always go to stderr; ``--quiet`` keeps only those. Under torchrun only rank 0
speaks: the other ranks' UI is silent (their errors still reach stderr, prefixed with the rank).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator

from rich.console import Console

from ucan_cli.options import RuntimeOptions
from ucan_cli.progress import Advance


class UI:
    def __init__(self, rt: RuntimeOptions):
        self.rt = rt
        self.silent = not rt.main  # a rank other than 0 under a launcher
        self.quiet = rt.quiet or self.silent
        self.err = Console(stderr=True, highlight=False)
        self.out = self.err if rt.json else Console(highlight=False)

    def table(self, renderable) -> None:
        """A summary table or panel (stdout, or stderr under --json); hidden by --quiet."""
        if not self.quiet:
            self.out.print(renderable)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message)

    def detail(self, message: str) -> None:
        if self.rt.verbose and not self.quiet:
            self.err.print(f"[dim]{message}[/]")

    def warn(self, message: str) -> None:
        from rich.markup import escape

        if self.silent:
            return
        # The message is text, not markup: a path or `pip install 'ucan-cli[plot]'` keeps its brackets.
        self.err.print(f"[yellow]warning[/]: {escape(message)}", soft_wrap=True)

    def emit_json(self, document) -> None:
        """The one JSON document of a --json run (never NaN or Infinity)."""
        if self.silent:
            return
        sys.stdout.write(json.dumps(document, indent=2, allow_nan=False, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Advance]:
        """A Rich progress bar on stderr (none under --quiet or when stderr is not a terminal)."""
        if self.quiet or not self.err.is_terminal:
            yield lambda n=1: None
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=self.err, transient=True) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)
