"""Keep Python's full garbage collections short while medseg's widgets are open.

Python's cyclic garbage collector holds the GIL while it runs, so a collection in any thread
stops napari's GUI thread. A full (generation 2) collection walks every tracked object of the
process: with napari, torch and MONAI loaded that is about 0.6 M objects and 0.15-0.6 s, at
random moments (the collector starts one when enough new objects have survived), which alone
breaks the plugin's 100 ms budget for a GUI-thread block.

Nearly all of those objects live as long as the process: modules, classes and functions of
napari, Qt, torch and MONAI, the viewer itself. :func:`gc.freeze` moves the objects that exist
at the time into a permanent generation that later collections skip. Done at the end of a full
collection (a ``gc.callbacks`` hook), it freezes only what that collection found alive, never
garbage. The next full collections walk only the objects made since, so they take milliseconds;
one is run after each task of a medseg widget (:func:`collect_young`) so that the objects made
since stay few.

What a frozen object costs: if it later becomes garbage *in a reference cycle*, the collector
no longer frees it (reference counting still frees everything else). The large cyclic garbage
of a napari session is a removed layer (layers, their events and their vispy visuals reference
each other) with its arrays. So whenever a layer leaves a viewer that has a medseg widget, the
permanent generation is handed back to the collector (:func:`gc.unfreeze`); the next full
collection walks everything once, frees the layer, and freezes its survivors again. Closing the
last medseg widget hands everything back for good.

Set ``MEDSEG_NAPARI_FREEZE_GC=0`` to leave the collector alone.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import threading
import weakref
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["install", "is_active", "collect_young"]

ENV_SWITCH = "MEDSEG_NAPARI_FREEZE_GC"


class _Collector:
    """Process-wide: freeze after each full collection, unfreeze when a layer is removed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: set[int] = set()
        self._keys = itertools.count(1)
        self._viewers: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self.hooked = False
        #: nothing frozen (before the first full collection, after a layer removal): a full
        #: collection now would walk every object of the process
        self.handed_back = True

    # -- collector side (runs in whichever thread triggered the collection) ------------------
    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "stop" and info.get("generation") == 2:
            # every object left at this point survived a full collection: freeze them
            gc.freeze()
            self.handed_back = False

    # -- GUI side ------------------------------------------------------------------------
    def attach(self, owner: Any, viewer: Any) -> None:
        with self._lock:
            if getattr(owner, "_medseg_collector_key", None) in self._owners:
                return
            # a fresh key, not id(owner): a closed widget's id can be reused by the next one
            key = next(self._keys)
            owner._medseg_collector_key = key
            self._owners.add(key)
            if not self.hooked:
                gc.callbacks.append(self._on_gc)
                self.hooked = True
                logger.debug("full collections now freeze their survivors")
        if viewer not in self._viewers:
            self._viewers.add(viewer)
            viewer.layers.events.removed.connect(self._on_layer_removed)
        owner.destroyed.connect(lambda *_: self.detach(key))

    def detach(self, key: int) -> None:
        with self._lock:
            self._owners.discard(key)
            if self._owners or not self.hooked:
                return
            gc.callbacks.remove(self._on_gc)
            self.hooked = False
            self.handed_back = True
            logger.debug("last medseg widget closed: %d frozen objects handed back", gc.get_freeze_count())
            gc.unfreeze()

    def _on_layer_removed(self, event: Any = None) -> None:
        # the removed layer may be frozen: let the next full collection see (and free) it
        if self.hooked:
            logger.debug("layer removed: %d frozen objects handed back to the collector", gc.get_freeze_count())
            gc.unfreeze()
            self.handed_back = True


_COLLECTOR = _Collector()


def install(owner: Any, viewer: Any) -> None:
    """Keep full collections short while ``owner`` (a medseg dock widget) is alive.

    Parameters
    ----------
    owner : QObject
        The widget; when the last such widget is destroyed the collector goes back to
        Python's defaults (hook removed, permanent generation unfrozen).
    viewer : napari.Viewer
        Its viewer; removing any layer from it unfreezes, so a removed layer can be freed.
    """
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in {"0", "false", "no", "off"}:
        return
    _COLLECTOR.attach(owner, viewer)


def is_active() -> bool:
    """Whether full collections currently freeze their survivors."""
    return _COLLECTOR.hooked


def collect_young() -> bool:
    """Run a full collection now, while it walks only the objects made since the last freeze.

    Called by :class:`._worker.TaskRunner` in an event-loop turn of its own after each task
    (GUI thread, between two actions). Python starts a full collection by itself once the
    objects that survived since the last one reach a quarter of those that survived then,
    which after a freeze is a large number: the collection then walked the ~150 k objects
    made by several actions (50-65 ms), inside whichever action made the last of them. Run
    after each action, it walks what that action made. Nothing is done while nothing is
    frozen (before the first full collection, after a layer removal): that one would walk
    every object of the process, and is left to Python.

    Returns
    -------
    bool
        Whether a collection ran.
    """
    c = _COLLECTOR
    if not c.hooked or c.handed_back or not gc.isenabled():
        return False
    gc.collect()
    return True
