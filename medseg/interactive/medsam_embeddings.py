"""LiteMedSAM's per-slice image embeddings of one image: model input, cache, disk store, background thread.

* **Model input** (the published LiteMedSAM 3D protocol): CT window level/width, other images
  the given percentiles of their non-zero voxels, to 0-255; per axial slice ``k`` the longest
  side resized to 256 (area averaging down, bilinear up), min-max to [0, 1], zero-padded
  bottom/right, 3 channels.
* **Cache**: a byte-bounded LRU (:class:`~.embedding_cache.EmbeddingCache`, float16), plus an
  optional folder store (benchmark re-runs).
* **Background**: :meth:`SliceEmbeddings.prefetch` embeds from a slice outwards in a thread; it
  returns at once, waits while a prediction runs (:meth:`SliceEmbeddings.foreground`), and
  never evicts. One encoder run at a time. Every instance's threads stop at interpreter exit (a
  daemon thread inside the encoder's native code when the interpreter ends aborts the process).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from medseg.interactive.embedding_cache import EmbeddingCache

log = logging.getLogger(__name__)

__all__ = ["SliceEmbeddings", "MODEL_SIDE", "EMBEDDING_BYTES"]

MODEL_SIDE = 256  #: the model's input side (pixels)
EMBEDDING_BYTES = 256 * 64 * 64 * 2  #: one slice's float16 embedding (2 MiB)

_LIVE: "weakref.WeakSet[SliceEmbeddings]" = weakref.WeakSet()


@atexit.register
def _stop_background_work() -> None:
    for emb in list(_LIVE):
        emb.cancel()


class SliceEmbeddings:
    """The embeddings of one image's axial slices, computed on demand or in the background.

    Parameters
    ----------
    encoder : callable
        (3, 256, 256) float32 in [0, 1] -> (256, 64, 64) (:func:`.medsam_runtime.make_encoder`).
    cache_bytes : int
        Bound of the in-memory cache.
    ct_window : (level, width)
        HU window of CT images.
    mr_percentiles : (low, high)
        Intensity percentiles of other images.
    store : path, optional
        A folder where embeddings are also kept (per image content and encoder).
    max_enlarge : float
        Largest enlargement of a slice to the model's input (``inf``: the longest side always
        fills the 256 pixels, the published protocol; 1: small slices are zero-padded at their
        native size instead of enlarged).
    """

    def __init__(self, encoder: Callable[[np.ndarray], np.ndarray], cache_bytes: int, *,
                 ct_window: tuple[float, float] = (40.0, 400.0), mr_percentiles: tuple[float, float] = (0.5, 99.5),
                 store=None, max_enlarge: float = float("inf")) -> None:
        self.encoder = encoder
        self.max_enlarge = float(max_enlarge)
        self._all = EmbeddingCache(cache_bytes)  # every CT window's slices, one bound, one LRU order
        #: the current window's slices (a view of the shared cache; see :meth:`set_ct_window`)
        self.cache = self._all.view(None)
        self.ct_window, self.mr_percentiles = ct_window, mr_percentiles
        self.store = store
        self.encoded = 0  # slices encoded (foreground + background)
        self.encode_seconds = 0.0
        self.image: Optional[np.ndarray] = None
        self._key = None
        self._norm: Optional[tuple[float, float, bool]] = None
        self._is_ct = False
        self._store_dir: Optional[Path] = None
        self._content = None  # sha1 of the image's bytes (only with a store)
        self._lock = threading.Lock()
        self._busy_fg = 0  # predictions running: the background thread waits meanwhile
        self._bg: list[threading.Thread] = []  # background threads (told to stop, or running)
        self._bg_stop = threading.Event()
        _LIVE.add(self)

    # -- image ------------------------------------------------------------------------------
    def set_image(self, arr: np.ndarray, *, is_ct: bool, identity: int) -> None:
        """Hold ``arr`` (Z, Y, X); the same image (``identity`` and content sample) keeps its embeddings."""
        # an id alone can be reused by a new array once the old one is freed: a content sample too
        sample = hashlib.sha1(np.ascontiguousarray(arr[:, ::7, ::5]).tobytes()).hexdigest()
        key = (identity, arr.shape, str(arr.dtype), sample)
        if key == self._key:
            return
        self.cancel()
        self._all.clear()
        self.image, self._key, self._is_ct = arr, key, bool(is_ct)
        self._norm = self._intensity_range(arr, is_ct)
        self.cache = self._all.view(self._norm)
        # the array's content digest (for the store's folder name), hashed once per image
        self._content = hashlib.sha1(np.ascontiguousarray(arr).tobytes()) if self.store is not None else None
        self._store_dir = self._store_for(arr)

    def set_ct_window(self, window: tuple[float, float]) -> bool:
        """Embed CT slices in another window ``(level, width)`` HU from now on.

        The background thread stops. The old window's embeddings stay cached (under the same
        byte bound and LRU order) and serve again when an object brings that window back (a
        lung, then a liver, then the other lung: no slice is encoded twice while the bound
        holds them). No effect on other images. Returns True when the window changed.
        """
        window = (float(window[0]), float(window[1]))
        if not self._is_ct or self.image is None or window == self.ct_window:
            return False
        self.cancel()
        with self._lock:  # an encoding in flight finishes in the window it started in
            self.ct_window = window
            self._norm = self._intensity_range(self.image, True)
            self.cache = self._all.view(self._norm)
            self._store_dir = self._store_for(self.image)
        return True

    def _intensity_range(self, arr: np.ndarray, ct: bool) -> tuple[float, float, bool]:
        if ct:
            lvl, w = self.ct_window
            return lvl - w / 2, lvl + w / 2, False
        sub = arr.reshape(-1)[:: max(1, arr.size // 2_000_000)].astype(np.float32)
        nz = sub[sub > 0] if np.any(sub > 0) else sub
        lo, hi = np.percentile(nz, self.mr_percentiles)
        return float(lo), float(max(hi, lo + 1e-6)), True

    def _store_for(self, arr: np.ndarray) -> Optional[Path]:
        if self.store is None:
            return None
        h = self._content.copy()
        scale = MODEL_SIDE / max(arr.shape[1:])
        h.update(repr((arr.shape, str(arr.dtype), self._norm, getattr(self.encoder, "name", ""))).encode())
        if scale > self.max_enlarge:  # (the key of fill-the-input embeddings is unchanged)
            h.update(repr(("scale", self.max_enlarge)).encode())
        d = Path(self.store) / h.hexdigest()[:20]
        d.mkdir(parents=True, exist_ok=True)
        return d

    def scale(self) -> float:
        """Model pixels per native pixel of a slice (256 over its longest side, at most
        ``max_enlarge``; > 1: enlarged)."""
        return min(MODEL_SIDE / max(self.image.shape[1:]), self.max_enlarge)

    # -- one slice --------------------------------------------------------------------------
    def slice_input(self, k: int) -> tuple[np.ndarray, tuple[int, int]]:
        """(3, 256, 256) float32 model input of slice ``k`` and its resized (h, w) before padding."""
        import torch
        import torch.nn.functional as F

        lo, hi, keep_zero = self._norm
        sl = self.image[k].astype(np.float32)
        x = (np.clip(sl, lo, hi) - lo) / (hi - lo) * 255.0
        if keep_zero:
            x[sl == 0] = 0
        h, w = x.shape
        s = self.scale()
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        t = torch.from_numpy(x)[None, None]
        mode = "area" if s < 1 else "bilinear"
        t = F.interpolate(t, size=(nh, nw), mode=mode, **({} if mode == "area" else {"align_corners": False}))
        r = t[0, 0].numpy()
        r = (r - r.min()) / max(float(r.max() - r.min()), 1e-8)
        out = np.zeros((3, MODEL_SIDE, MODEL_SIDE), np.float32)
        out[:, :nh, :nw] = r
        return out, (nh, nw)

    def get(self, k: int) -> np.ndarray:
        """(256, 64, 64) float16 embedding of slice ``k`` (cached)."""
        e = self.cache.get(k)
        if e is not None:
            return e
        with self._lock:
            cache = self.cache
            e = cache.get(k)  # the background thread may have just made it
            if e is not None:
                return e
            f = self._store_dir / f"{k}.npy" if self._store_dir is not None else None
            if f is not None and f.is_file():
                e = np.load(f)
            else:
                t0 = time.perf_counter()
                e = np.asarray(self.encoder(self.slice_input(k)[0]), np.float16)
                self.encode_seconds += time.perf_counter() - t0
                self.encoded += 1
                if f is not None:
                    from medseg.io.atomic import atomic_path

                    with atomic_path(f) as tmp:
                        np.save(tmp, e)
            cache.put(k, e)
        return e

    # -- background -------------------------------------------------------------------------
    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """While inside, the background thread waits (a prediction's slices come first)."""
        self._busy_fg += 1
        try:
            yield
        finally:
            self._busy_fg -= 1

    def progress(self) -> tuple[int, int]:
        """``(slices embedded in the current window, slices the background thread embeds at most)``:
        at most the image's slices, and those that fit beside the other CT windows' embeddings
        (the background thread never evicts)."""
        if self.image is None:
            return 0, 0
        done = len(self.cache)
        room = (self.cache.max_bytes - self.cache.nbytes) // EMBEDDING_BYTES
        return done, min(self.image.shape[0], max(1, done + room))

    def prefetch(self, center: int) -> None:
        """Embed slices from ``center`` outwards in a background thread (until the cache is full).

        Returns at once (safe on a GUI thread): a previous background thread is told to stop
        and ends after its current slice.
        """
        if self.image is None:
            return
        self._bg_stop.set()
        n = self.image.shape[0]
        order = [center]
        for d in range(1, n):
            order += [c for c in (center + d, center - d) if 0 <= c < n]
        stop = self._bg_stop = threading.Event()
        self._bg = [t for t in self._bg if t.is_alive()]
        self._bg.append(threading.Thread(target=self._work, args=(order, stop), name="medsam-embed", daemon=True))
        self._bg[-1].start()

    def _work(self, order: list[int], stop: threading.Event) -> None:
        for k in order:
            while self._busy_fg and not stop.is_set():
                time.sleep(0.05)
            if stop.is_set():
                return
            if k in self.cache:
                continue
            if not self.cache.room_for(EMBEDDING_BYTES):
                return  # never evict to prefetch
            try:
                self.get(k)
            except Exception:  # noqa: BLE001 - a background failure must not kill the session
                log.exception("background embedding of slice %d failed", k)
                return

    def cancel(self) -> None:
        """Stop the background embedding (returns after the slice being encoded)."""
        self._bg_stop.set()
        while self._bg:
            self._bg.pop().join()

    @property
    def busy(self) -> bool:
        """True while a background thread is embedding."""
        return any(t.is_alive() for t in self._bg)
