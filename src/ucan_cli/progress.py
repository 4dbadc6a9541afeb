"""The progress protocol between the library and whoever renders it.

Library functions that pass over data take ``progress: ProgressFactory | None``. A factory is
called with a description and a total and returns a context manager that yields an ``advance(n)``
callable. The CLI passes a Rich implementation (``ucan_cli.ui``); notebooks and tests pass nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import ContextManager, Protocol

Advance = Callable[[int], None]


class ProgressFactory(Protocol):
    def __call__(self, description: str, total: int) -> ContextManager[Advance]: ...


@contextlib.contextmanager
def null_progress(description: str, total: int) -> Iterator[Advance]:
    """A progress factory that shows nothing."""
    yield lambda n=1: None


def or_null(progress: ProgressFactory | None) -> ProgressFactory:
    return null_progress if progress is None else progress
