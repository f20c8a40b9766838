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
    """Progress bars on stderr; one Live display shared by nested tasks."""

    def __init__(self, console: Console = err):
        self.console = console
        self.progress: Progress | None = None
        self.open = 0

    def task(self, description: str, total: int | None = None) -> Task:
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


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True)


def warn(message: str) -> None:
    """A notice in yellow; `message` is printed literally."""
    err.print(f"[yellow]{escape(message)}[/]", highlight=False, markup=True)
