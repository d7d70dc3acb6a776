"""The ``Engine`` protocol: what a :class:`~medseg.interactive.session.Session` needs from an engine.

An engine segments one object from its prompts on a region of interest (ROI). It holds the
image (:meth:`Engine.set_image`) and may keep caches between predictions of the same object;
:meth:`Engine.reset` drops them (a new object, an undo). Capabilities are plain attributes so
that callers ask instead of probing with ``hasattr``:

* ``supports_undo``: the prediction after :meth:`Engine.reset` depends only on the prompts and
  the previous mask passed in, so :meth:`Session.undo` followed by a new prompt gives what that
  prompt would have given without the undone one;
* ``background_preparation``: the engine prepares work in a background thread (LiteMedSAM's
  slice embeddings) and also has the :class:`BackgroundPreparation` methods (prefetch around
  the slice in view, progress, cancel, and slice-by-slice reports of a prediction).
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol, runtime_checkable

import numpy as np

from medseg.core.prompts import ObjectPrompts
from medseg.core.volume import Volume

__all__ = ["Engine", "BackgroundPreparation", "Slices"]

#: An ROI in the full volume, in array order ``(k, j, i)``.
Slices = tuple[slice, slice, slice]


@runtime_checkable
class Engine(Protocol):
    """A click-to-segment engine (structural type: any class with these members conforms).

    Attributes
    ----------
    name : str
        Short name used in messages (``"classical"``, ``"medsam"``...).
    prompt_types : tuple of str
        The prompt kinds it takes, from :data:`medseg.core.prompts.PROMPT_TYPES`.
    supports_undo : bool
        After :meth:`reset`, predictions depend only on the arguments of :meth:`predict`.
    background_preparation : bool
        It prepares work in the background (:class:`BackgroundPreparation`).
    """

    name: str
    prompt_types: tuple[str, ...]
    supports_undo: bool
    background_preparation: bool

    def set_image(self, volume: Volume) -> None:
        """Hold ``volume`` (Z, Y, X) for the predictions to come; drops every cache."""

    def reset(self) -> None:
        """Drop the state kept between predictions (a new object begins, or an undo)."""

    def predict(self, prompts: ObjectPrompts, *, blocked: Optional[np.ndarray] = None,
                previous: Optional[tuple[Slices, np.ndarray]] = None) -> tuple[Slices, np.ndarray]:
        """Segment the object of ``prompts``.

        Parameters
        ----------
        prompts : ObjectPrompts
            All prompts of the object, voxel indices ``(k, j, i)``.
        blocked : (Z, Y, X) ndarray, optional
            Non-zero where voxels must stay background (locked objects).
        previous : (slices, (z, y, x) bool ndarray), optional
            The object's mask before this prompt, as an ROI and its patch.

        Returns
        -------
        slices : 3 slices
            The ROI in the full volume.
        mask : (z, y, x) bool ndarray
            The object inside the ROI.
        """


@runtime_checkable
class BackgroundPreparation(Protocol):
    """The extra methods of an engine whose ``background_preparation`` is True."""

    def prefetch(self, center: int) -> None:
        """Start preparing around axial slice ``center`` in the background."""

    def cancel(self) -> None:
        """Stop background work (the image changes or the session closes)."""

    def preparation_progress(self) -> tuple[int, int]:
        """``(units prepared, units it prepares at most)`` for a progress indicator."""

    def set_observer(self, on_slice: Optional[Callable[[int, np.ndarray], None]] = None,
                     should_stop: Optional[Callable[[], bool]] = None) -> None:
        """Watch the next predictions: ``on_slice(k, mask2d)`` as each axial slice of the object
        is ready, ``should_stop()`` asked between slices (True: the prediction raises
        :class:`~medseg.core.errors.CancelledError`). ``None`` turns either off."""
