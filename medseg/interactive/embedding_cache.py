"""A byte-bounded, thread-safe LRU cache (LiteMedSAM's per-slice embeddings)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional

import numpy as np

__all__ = ["EmbeddingCache"]


class EmbeddingCache:
    """An LRU cache of per-slice embeddings bounded in bytes (thread-safe).

    Parameters
    ----------
    max_bytes : int
        Bound on the summed ``nbytes`` of the stored arrays.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._d: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.peak_bytes = 0

    def __contains__(self, k: int) -> bool:
        with self._lock:
            return k in self._d

    def __len__(self) -> int:
        return len(self._d)

    def keys(self) -> list[int]:
        """The cached slices, least recently used first."""
        with self._lock:
            return list(self._d)

    def get(self, k: int) -> Optional[np.ndarray]:
        with self._lock:
            v = self._d.get(k)
            if v is not None:
                self._d.move_to_end(k)
            return v

    def room_for(self, nbytes: int) -> bool:
        with self._lock:
            return self.nbytes + nbytes <= self.max_bytes

    def put(self, k: int, value: np.ndarray) -> None:
        with self._lock:
            old = self._d.pop(k, None)
            if old is not None:
                self.nbytes -= old.nbytes
            while self._d and self.nbytes + value.nbytes > self.max_bytes:
                _, ev = self._d.popitem(last=False)
                self.nbytes -= ev.nbytes
            if value.nbytes <= self.max_bytes:
                self._d[k] = value
                self.nbytes += value.nbytes
                self.peak_bytes = max(self.peak_bytes, self.nbytes)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self.nbytes = 0
