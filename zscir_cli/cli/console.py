"""Consoles, progress bars, logging and error reporting for the CLI.

Results go to stdout; logs, progress and errors to stderr.

Both consoles print text literally (markup=False): file names, captions and modification
texts are user strings, and "photo [draft].jpg" or "[/x]" must print as typed, not as Rich
markup. Styling is applied with `Text` objects or explicit `markup=True` around escaped text.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from zscir_cli.core.progress import Reporter, Task

out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)


def debug_enabled() -> bool:
    return os.environ.get("ZSCIR_DEBUG", "") not in ("", "0")


def setup_logging() -> None:
    root = logging.getLogger()
    if any(isinstance(h, RichHandler) for h in root.handlers):
        return
    handler = RichHandler(console=err, show_path=False, show_time=False, markup=False)
    handler.addFilter(_ours_or_errors)
    root.handlers[:] = [handler]
    # other libraries' chatter (open_clip's 'initialized randomly', datasets) only in debug mode
    root.setLevel(logging.DEBUG if debug_enabled() else logging.ERROR)
    logging.getLogger("zscir").setLevel(logging.DEBUG if debug_enabled() else logging.INFO)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _ours_or_errors(record: logging.LogRecord) -> bool:
    """Libraries that set their own logger's level (huggingface_hub: WARNING) would reach this
    handler through propagation as well as through their own handler, printing each warning
    twice; outside debug mode only zscir's messages and errors pass here."""
    return debug_enabled() or record.name.startswith("zscir") or record.levelno >= logging.ERROR


class _RichTask(Task):
    def __init__(self, progress: Progress, task_id: TaskID, owner: RichReporter):
        self.progress, self.task_id, self.owner = progress, task_id, owner

    def advance(self, n: int = 1, **fields: Any) -> None:
        extra = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in fields.items())
        self.progress.update(self.task_id, advance=n, extra=extra)

    def close(self) -> None:
        self.owner._finish(self.task_id)


class RichReporter(Reporter):
    """Progress bars on stderr; one Live display shared by nested tasks. When stderr is not a
    terminal (a log file, a cluster job), plain lines instead (see `PlainTask`)."""

    def __init__(self, console: Console = err, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.console = console
        self.progress: Progress | None = None
        self.open = 0
        self.interval = interval if interval is not None else progress_interval()
        self.clock = clock

    def task(self, description: str, total: int | None = None) -> Task:
        if not self.console.is_terminal:
            return PlainTask(self, description, total)
        if self.progress is None:
            self.progress = Progress(
                TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}", markup=False), console=self.console, transient=False)
            self.progress.start()
        self.open += 1
        return _RichTask(self.progress, self.progress.add_task(description, total=total, extra=""), self)

    def _finish(self, task_id: TaskID) -> None:
        self.open -= 1
        if self.progress is not None and self.open <= 0:
            self.progress.stop()
            self.progress = None
            self.open = 0

    def info(self, message: str) -> None:
        self.console.print(message, highlight=False, markup=False)


def progress_interval() -> float:
    """Seconds between two plain progress lines: $ZSCIR_PROGRESS_SECONDS, else 10."""
    raw = os.environ.get("ZSCIR_PROGRESS_SECONDS", "")
    try:
        return max(0.0, float(raw)) if raw else 10.0
    except ValueError:
        return 10.0


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _fields(fields: dict[str, Any]) -> str:
    return "".join(f"  {k} {v:.4g}" if isinstance(v, float) else f"  {k} {v}" for k, v in fields.items())


class PlainTask(Task):
    """Progress as one plain line every `interval` seconds and one when the task ends: what a
    log file of a redirected run can hold (a Rich bar there would print nothing until the end).
    The rate counts the steps after the first advance, so a resumed run's jump to its last
    epoch does not inflate it."""

    def __init__(self, owner: RichReporter, description: str, total: int | None):
        self.owner, self.description, self.total = owner, description, total
        self.start = self.last = owner.clock()
        self.done, self.fields = 0, {}
        self.first: tuple[float, int] | None = None  # (time, count) after the first advance
        self.closed = False

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update(fields)
        now = self.owner.clock()
        if self.first is None:
            self.first = (now, self.done)
        elif now - self.last >= self.owner.interval:
            self.last = now
            self.owner.info(self.line(now))

    def rate(self, now: float) -> float | None:
        t0, d0 = self.first if self.first is not None and self.done > self.first[1] else (self.start, 0)
        return (self.done - d0) / (now - t0) if now > t0 and self.done > d0 else None

    def line(self, now: float, final: bool = False) -> str:
        rate = self.rate(now)
        count = f"{self.done}/{self.total} ({100 * self.done / self.total:.0f}%)" if self.total else f"{self.done}"
        parts = [f"{self.description}: {count}"]
        if final:
            complete = self.total is None or self.done >= self.total
            parts.append(f"{'done in' if complete else 'stopped after'} {_duration(now - self.start)}")
        if rate is not None:
            parts.append(f"{rate:.0f}/s" if rate >= 100 else f"{rate:.3g}/s")
            if not final and self.total:
                parts.append(f"eta {_duration(max(0, self.total - self.done) / rate)}")
        return "  ".join(parts) + _fields(self.fields)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.owner.info(self.line(self.owner.clock(), final=True))


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)


def warn(message: str) -> None:
    """A notice in yellow; `message` is printed literally."""
    err.print(f"[yellow]{escape(message)}[/]", highlight=False, markup=True)
