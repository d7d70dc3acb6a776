"""Engines that work slice by slice (LiteMedSAM): the object growing on screen, background
embedding progress, and embedding from the slice in view.

* :func:`watched_prompt` runs a prompt in the worker thread with the engine's observer set:
  each axial slice of the object goes to the GUI thread as it is ready (``partial``), and
  Cancel stops the propagation between slices (the session then keeps the object as it was).
* :class:`PreparationIndicator` shows how many slices the engine has embedded in the
  background, and moves the background work to the slice in view when the user scrolls.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QProgressBar

from medseg.core.errors import CancelledError
from medseg.interactive.engine import BackgroundPreparation

from medseg_napari._layers import world_to_index

log = logging.getLogger(__name__)

__all__ = ["watched_prompt", "show_slice", "PreparationIndicator", "slice_engine"]


def slice_engine(session: Any) -> Optional[BackgroundPreparation]:
    """The session's engine when it prepares in the background and reports slices, else None."""
    engine = getattr(session, "engine", None)
    if engine is not None and engine.background_preparation and isinstance(engine, BackgroundPreparation):
        return engine
    return None


def _rewrite_patch(session: Any, preview: np.ndarray, before: tuple, shown: list[int]) -> Any:
    """The preview's box over the slices the GUI was sent plus the object's old and new boxes,
    with the session's values in full (not a minimal diff: the GUI wrote those slices while
    the worker ran, so what the worker's copy of the preview says about them may be stale)."""
    from medseg_napari._interactive import box_union

    z, y, x = preview.shape
    shown_box = (slice(min(shown), max(shown) + 1), slice(0, y), slice(0, x))
    box = box_union(box_union(before, session.mask_box), shown_box)
    return ("box", box, np.asarray(session.mask[box]).astype(preview.dtype))


def watched_prompt(prompt: Callable[..., Any], session: Any, kind: str, args: tuple, positive: bool,
                   preview: np.ndarray, layer_labels: Any = None, *, progress: Any = None,
                   cancel: Optional[Callable[[], bool]] = None,
                   partial: Optional[Callable[[Any], None]] = None) -> tuple[Any, bool]:
    """Worker thread: ``prompt(session, kind, args, positive, preview, layer_labels)`` with the
    engine's slices sent to ``partial((k, mask2d))`` and ``cancel`` asked between slices.

    Returns
    -------
    patch : the preview layer's update (as :func:`._interactive.diff_patch`)
    cancelled : bool
        True when Cancel stopped the propagation; the patch then puts back the object as it was.
    """
    engine = slice_engine(session) if partial is not None else None
    before = session.mask_box
    shown: list[int] = []
    if engine is not None:
        engine.set_observer(lambda k, m: (shown.append(k), partial((k, np.array(m, copy=True)))), cancel)
    cancelled = False
    try:
        patch = prompt(session, kind, args, positive, preview, layer_labels)
    except CancelledError:
        patch, cancelled = None, True
    finally:
        if engine is not None:
            engine.set_observer(None, None)
    if shown:
        patch = _rewrite_patch(session, preview, before, shown)
    return patch, cancelled


def show_slice(layer: Any, part: tuple[int, np.ndarray]) -> None:
    """GUI thread: write one slice of the growing object into the preview layer."""
    if layer is None:
        return
    k, mask2d = part
    layer.data[k] = mask2d
    layer.refresh()


class PreparationIndicator(QProgressBar):
    """Background preparation of the session's engine: a bar of slices embedded, and the
    background work moved to the slice in view (300 ms after the user stops scrolling).

    Parameters
    ----------
    viewer : napari.Viewer
    session_of : callable
        Returns the current session (or None).
    image_of : callable
        Returns the session's image layer (or None).
    """

    def __init__(self, viewer: Any, session_of: Callable[[], Any], image_of: Callable[[], Any]) -> None:
        super().__init__()
        self.viewer = viewer
        self._session_of, self._image_of = session_of, image_of
        self.setFormat("embedding slices: %v / %m")
        self.setToolTip("LiteMedSAM prepares slices in the background, from the slice in view outwards; "
                        "prompts on prepared slices answer at once")
        self.setVisible(False)
        self._poll = QTimer(self)
        self._poll.setInterval(500)
        self._poll.timeout.connect(self.update_progress)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(300)
        self._debounce.timeout.connect(self.prefetch_in_view)
        viewer.dims.events.current_step.connect(self._on_step)

    def _on_step(self, *_: Any) -> None:
        if slice_engine(self._session_of()) is not None:
            self._debounce.start()

    def start(self) -> None:
        """A session started: embed from the slice in view and show the progress."""
        if slice_engine(self._session_of()) is None:
            self._poll.stop()
            self.setVisible(False)
            return
        self.prefetch_in_view()
        self.update_progress()
        self._poll.start()

    def stop(self) -> None:
        """Stop following the view and polling (the session ends)."""
        self._poll.stop()
        self._debounce.stop()
        self.setVisible(False)

    def prefetch_in_view(self) -> Optional[int]:
        """Move the engine's background work to the axial slice in view; returns that slice."""
        engine, image = slice_engine(self._session_of()), self._image_of()
        if engine is None or image is None:
            return None
        k = world_to_index(image, self.viewer.dims.point, clip=True)[0]
        engine.prefetch(k)
        return k

    def update_progress(self) -> None:
        engine = slice_engine(self._session_of())
        if engine is None:
            self._poll.stop()
            self.setVisible(False)
            return
        done, total = engine.preparation_progress()
        if total <= 0:  # nothing to prepare for this image (the fused engine on small slices)
            self.setVisible(False)
            return
        self.setRange(0, total)
        self.setValue(min(done, total))
        self.setVisible(True)
