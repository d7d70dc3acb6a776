"""A byte-bounded, thread-safe LRU cache (LiteMedSAM's per-slice embeddings)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable, Optional

import numpy as np

__all__ = ["EmbeddingCache", "CacheView"]


class EmbeddingCache:
    """An LRU cache of per-slice embeddings bounded in bytes (thread-safe).

    Parameters
    ----------
    max_bytes : int
        Bound on the summed ``nbytes`` of the stored arrays.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self._d: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.peak_bytes = 0

    def __contains__(self, k: int) -> bool:
        with self._lock:
            return k in self._d

    def __len__(self) -> int:
        return len(self._d)

    def keys(self) -> list:
        """The cached keys, least recently used first."""
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

    def discard(self, keys) -> None:
        """Drop ``keys`` (those not cached are ignored)."""
        with self._lock:
            for k in keys:
                v = self._d.pop(k, None)
                if v is not None:
                    self.nbytes -= v.nbytes

    def view(self, namespace: Hashable) -> "CacheView":
        """The entries of one ``namespace`` (keys ``(namespace, k)``), sharing this cache's bound and LRU order."""
        return CacheView(self, namespace)


class CacheView:
    """One namespace of an :class:`EmbeddingCache` with the cache's own API on plain keys.

    The slices of one image embedded in one CT window are a namespace; the windows share the
    byte bound and the LRU order, so switching windows keeps the other window's embeddings
    until they are the least recently used.
    """

    def __init__(self, cache: EmbeddingCache, namespace: Hashable) -> None:
        self.store, self.namespace = cache, namespace

    def __contains__(self, k) -> bool:
        return (self.namespace, k) in self.store

    def keys(self) -> list:
        """This namespace's keys, least recently used first."""
        return [k for ns, k in self.store.keys() if ns == self.namespace]

    def __len__(self) -> int:
        return len(self.keys())

    def get(self, k) -> Optional[np.ndarray]:
        return self.store.get((self.namespace, k))

    def put(self, k, value: np.ndarray) -> None:
        self.store.put((self.namespace, k), value)

    def room_for(self, nbytes: int) -> bool:
        """Room under the shared bound without evicting."""
        return self.store.room_for(nbytes)

    def clear(self) -> None:
        """Drop this namespace's entries (the others stay)."""
        self.store.discard([(self.namespace, k) for k in self.keys()])

    @property
    def max_bytes(self) -> int:
        return self.store.max_bytes

    @property
    def nbytes(self) -> int:
        """Bytes held by the whole cache (every namespace: the bound is shared)."""
        return self.store.nbytes

    @property
    def peak_bytes(self) -> int:
        return self.store.peak_bytes
