"""Progress reporting without a UI dependency.

Library code reports progress through a `Reporter`; the CLI passes one that draws Rich
progress bars on stderr, tests and library users get the silent default. This keeps Rich out
of every layer below the CLI.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # annotations are lazy here: no runtime dependency on typing_extensions
    from typing_extensions import Self

T = TypeVar("T")
log = logging.getLogger("zscir")


class Task:
    """One progress bar: `advance` it, optionally with fields such as loss=0.31."""

    def advance(self, n: int = 1, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Reporter:
    """Silent reporter; the CLI subclasses it. `info` goes to the 'zscir' logger."""

    def task(self, description: str, total: int | None = None) -> Task:
        return Task()

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        with self.task(description, total) as task:
            for item in items:
                yield item
                task.advance()

    def info(self, message: str) -> None:
        log.info(message)


NULL_REPORTER = Reporter()
