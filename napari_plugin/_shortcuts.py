"""Keyboard shortcuts of the medseg widgets (installed on the viewer when a widget opens).

========  ======================================================
key       action
========  ======================================================
Alt-1     CT window: soft tissue (selected image layer)
Alt-2     CT window: lung
Alt-3     CT window: bone
Alt-4     CT window: brain
Alt-0     auto-contrast (0.5–99.5 percentiles, for MR)
Alt-G     auto-segment: run
Alt-P     click to segment: prompt mode on/off
Alt-N     click to segment: toggle negative prompts
Alt-A     click to segment: accept the current object
Alt-Z     click to segment: undo the last prompt
Alt-R     click to segment: reset the current object
Alt-E     correct boundaries: apply the chosen operation
Alt-U     correct boundaries: undo the last operation
========  ======================================================

In prompt mode, a click adds a positive point and Shift-click a negative point; in box mode
a drag draws a box on the current slice; in scribble mode a drag draws a scribble.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np

__all__ = ["SHORTCUTS", "install_shortcuts", "apply_window", "selected_image"]

SHORTCUTS: dict[str, str] = {
    "Alt-1": "CT window: soft tissue",
    "Alt-2": "CT window: lung",
    "Alt-3": "CT window: bone",
    "Alt-4": "CT window: brain",
    "Alt-0": "auto-contrast (MR)",
    "Alt-G": "auto-segment: run",
    "Alt-P": "click to segment: prompt mode on/off",
    "Alt-N": "click to segment: toggle negative prompts",
    "Alt-A": "click to segment: accept object",
    "Alt-Z": "click to segment: undo last prompt",
    "Alt-R": "click to segment: reset object",
    "Alt-E": "correct boundaries: apply",
    "Alt-U": "correct boundaries: undo",
}

# id(viewer) -> {widget kind: weakref to the widget}
_REGISTRY: dict[int, dict[str, Any]] = {}

_WINDOW_KEYS = {"Alt-1": "soft tissue", "Alt-2": "lung", "Alt-3": "bone", "Alt-4": "brain", "Alt-0": "auto"}


def apply_window(layer: Any, preset: str) -> tuple[float, float]:
    """Set an image layer's contrast limits to a CT preset or to auto-contrast (``"auto"``)."""
    from medseg_napari._layers import window_limits

    if preset == "auto":
        data = layer.data
        step = max(1, int(np.cbrt(data.size / 5e5)))
        sample = np.asarray(data[::step, ::step, ::step] if data.ndim == 3 else data, dtype=np.float32)
        lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
        limits = (lo, hi if hi > lo else lo + 1.0)
    else:
        limits = window_limits(preset)
    layer.contrast_limits_range = (min(limits[0], layer.contrast_limits_range[0]),
                                   max(limits[1], layer.contrast_limits_range[1]))
    layer.contrast_limits = limits
    return limits


def selected_image(viewer: Any) -> Any:
    from medseg_napari._layers import is_layer_type

    active = viewer.layers.selection.active
    if active is not None and is_layer_type(active, "image"):
        return active
    images = [l for l in viewer.layers if is_layer_type(l, "image")]
    return images[-1] if images else None


def _guide_viewer(viewer: Any) -> None:
    """Anatomical axis names and contrast sliders reaching the data's range, for medseg's layers.

    Done for the layers already open and for every layer added later (once per viewer).
    """
    from medseg_napari._layers import METADATA_KEY, is_layer_type, widen_contrast_range

    def guide(layer: Any) -> None:
        if METADATA_KEY not in (layer.metadata or {}):
            return
        if is_layer_type(layer, "image") and getattr(layer.data, "ndim", 0) == 3:
            try:
                widen_contrast_range(layer)
            except Exception:  # noqa: BLE001 - display only
                pass
        if viewer.dims.ndim >= 3:
            from medseg_napari._view import anatomical_axes

            anatomical_axes(viewer)

    if viewer in _GUIDED:
        return
    _GUIDED.add(viewer)
    for layer in list(viewer.layers):
        guide(layer)
    viewer.layers.events.inserted.connect(lambda event: guide(event.value))


_GUIDED: "weakref.WeakSet[Any]" = weakref.WeakSet()


def install_shortcuts(viewer: Any, **widgets: Any) -> None:
    """Bind the shortcuts on ``viewer``; ``widgets`` (autoseg=, interactive=, editor=) get their keys."""
    _guide_viewer(viewer)
    registry = _REGISTRY.setdefault(id(viewer), {})
    for name, w in widgets.items():
        registry[name] = weakref.ref(w)

    def widget(name: str) -> Any:
        ref = registry.get(name)
        return ref() if ref is not None else None

    def bind(key: str, fn: Callable[[], Any]) -> None:
        viewer.bind_key(key, lambda _viewer: fn(), overwrite=True)

    for key, preset in _WINDOW_KEYS.items():
        def set_window(preset: str = preset) -> None:
            layer = selected_image(viewer)
            if layer is not None:
                apply_window(layer, preset)
        bind(key, set_window)

    def call(name: str, method: str) -> Callable[[], Any]:
        def fn() -> Any:
            w = widget(name)
            if w is not None:
                return getattr(w, method)()
            return None
        return fn

    bind("Alt-G", call("autoseg", "run"))
    bind("Alt-P", call("interactive", "toggle_prompt_mode"))
    bind("Alt-N", call("interactive", "toggle_negative"))
    bind("Alt-A", call("interactive", "accept"))
    bind("Alt-Z", call("interactive", "undo"))
    bind("Alt-R", call("interactive", "reset"))
    bind("Alt-E", call("editor", "apply"))
    bind("Alt-U", call("editor", "undo"))
