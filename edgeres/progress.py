"""Progress and log lines: rich progress bars on a terminal, plain timestamped lines otherwise (CI, pipes)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO


class Reporter:
    """What stages use to tell the user what they are doing. Never prints to stdout (stdout is for results)."""

    def __init__(self, *, stream: TextIO | None = None, rich: bool | None = None, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.rich = self.stream.isatty() if rich is None else rich
        self.quiet = quiet
        self._t0 = time.monotonic()
        self._console: Any = None
        if self.rich:
            from rich.console import Console

            self._console = Console(file=self.stream)

    def log(self, msg: str) -> None:
        if self.quiet:
            return
        if self._console is not None:
            self._console.log(msg, highlight=False)
        else:
            print(f"[{time.monotonic() - self._t0:7.1f}s] {msg}", file=self.stream, flush=True)

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[_Task]:
        if self.quiet:
            yield _Task(None, None, self, description, total)
        elif self._console is not None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=self._console,
                transient=True,
            ) as bar:
                tid = bar.add_task(description, total=total, status="")
                yield _Task(bar, tid, self, description, total)
        else:
            yield _Task(None, None, self, description, total)


class _Task:
    def __init__(self, bar: Any, tid: Any, rep: Reporter, description: str, total: int) -> None:
        self.bar, self.tid, self.rep, self.description, self.total = bar, tid, rep, description, total
        self.done = 0
        self._last_pct = -1

    def advance(self, n: int = 1, *, status: str = "") -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.tid, advance=n, status=status)
            return
        # Plain mode: a line per 25% so CI logs stay short but show life.
        pct = int(100 * self.done / max(self.total, 1)) // 25 * 25
        if pct != self._last_pct and not self.rep.quiet and (pct > 0 or self.done == self.total):
            self._last_pct = pct
            extra = f" {status}" if status else ""
            self.rep.log(f"{self.description}: {self.done}/{self.total}{extra}")
