"""tqdm progress bars for the CLI's ``progress`` callbacks."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Optional

from tqdm import tqdm

__all__ = ["tqdm_progress"]


@contextmanager
def tqdm_progress(desc: str = "") -> Iterator[object]:
    """Yield a ``progress(done, total, message)`` callback drawing one tqdm bar on stderr."""
    bar: Optional[tqdm] = None

    def progress(done: int, total: Optional[int], message: str) -> None:
        nonlocal bar
        if bar is None or (total is not None and bar.total != total):
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=message or desc, file=sys.stderr, leave=False, dynamic_ncols=True)
        bar.set_description(message or desc, refresh=False)
        bar.n = done
        bar.refresh()

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()
