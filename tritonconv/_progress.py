"""One progress bar for the library's tuning and the benchmark's long loops: tqdm when it is installed (an
optional dependency, in the bench extra), plain iteration and print otherwise."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], description: str, total: int | None = None, unit: str = "it",
             leave: bool = True) -> Iterable[T]:
    """`items` behind a tqdm bar on stderr, shown only when stderr is a terminal and there are at least two
    items (`total`, else len(items)); `items` itself when tqdm is not installed."""
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return items
    total = len(items) if total is None else total  # type: ignore[arg-type]
    return tqdm(items, desc=description, total=total, unit=unit, leave=leave, file=sys.stderr,
                disable=None if total >= 2 else True)


def write(line: str) -> None:
    """Print `line` without breaking a progress bar that is being drawn."""
    try:
        from tqdm.auto import tqdm  # noqa: PLC0415 (optional dependency)
    except ImportError:
        print(line, flush=True)
        return
    tqdm.write(line)
