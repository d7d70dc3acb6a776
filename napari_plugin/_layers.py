"""Volume ⇄ napari layers, and napari world points ⇄ voxel indices (conversion point 3).

medseg's convention: ``Volume.array`` is ``(Z, Y, X)`` and ``Volume.affine`` maps the voxel
index ``(k, j, i)`` to LPS millimetres ``(x, y, z)``.

napari world frame used by this plugin
--------------------------------------
napari shows the last two world axes of a 3D scene on screen (rows downwards, columns to
the right) and slides along the first. We place every medseg layer in the world frame::

    world = (w0, w1, w2) = (-z, y, x) in LPS mm  =  (Inferior, Posterior, Left)

so that, with napari's default axis order, the views follow the radiological convention:

* axial (sliding w0): anterior at the top, patient left on the right of the screen;
* coronal (``viewer.dims.order = (1, 0, 2)``): superior at the top, patient left on the right;
* sagittal (``viewer.dims.order = (2, 0, 1)``): superior at the top, anterior on the left.

The layer's data → world transform is ``WORLD_FROM_LPS @ volume.affine``; when it is
axis-aligned it is given to napari as ``scale`` and ``translate`` (negative scales for flipped
axes), otherwise as ``affine`` (oblique volumes). The full geometry — the LPS affine, the
volume's provenance ``meta`` and, for labels, the label table — is kept in
``layer.metadata["medseg"]`` so that a labels layer written back lands on the source grid.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Generator, Iterator, Mapping, Optional, Sequence

import numpy as np

from medseg.errors import GeometryError, PromptError
from medseg.geometry import check_affine
from medseg.labels import Label, LabelTable, default_color
from medseg.segmentation import Segmentation
from medseg.volume import Volume

__all__ = [
    "WORLD_FROM_LPS",
    "METADATA_KEY",
    "CT_PRESETS",
    "world_affine",
    "layer_transform_kwargs",
    "image_layer_data",
    "labels_layer_data",
    "probability_layer_data",
    "label_colormap",
    "label_features",
    "affine_from_state",
    "volume_from_layer",
    "segmentation_from_layer",
    "labels_from_layer",
    "world_to_index",
    "index_to_world",
    "contrast_limits_for",
    "window_limits",
    "add_layer_data",
    "add_layer_steps",
    "canvas_painted_later",
    "make_layer",
    "reusable_layer",
    "update_layer",
    "show_layer",
    "show_layer_steps",
    "viewer_camera",
]

log = logging.getLogger(__name__)

METADATA_KEY = "medseg"

#: LPS ``(x, y, z, 1)`` → napari world ``(w0, w1, w2, 1) = (-z, y, x, 1)``.
WORLD_FROM_LPS = np.array(
    [[0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
LPS_FROM_WORLD = np.linalg.inv(WORLD_FROM_LPS)

#: CT window presets: name → (level, width) in HU.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}


# -- geometry -------------------------------------------------------------------------------
def world_affine(affine: np.ndarray) -> np.ndarray:
    """napari data ``(k, j, i)`` → world ``(w0, w1, w2)`` matrix of a voxel → LPS affine."""
    return WORLD_FROM_LPS @ check_affine(affine)


def layer_transform_kwargs(affine: np.ndarray) -> dict[str, Any]:
    """``scale``/``translate`` (axis-aligned grids) or ``affine`` (oblique) for napari.

    Parameters
    ----------
    affine : (4, 4) ndarray
        Voxel ``(k, j, i)`` → LPS mm.
    """
    w = world_affine(affine)
    lin = w[:3, :3]
    if np.allclose(lin, np.diag(np.diag(lin)), atol=1e-9):
        return {"scale": tuple(float(v) for v in np.diag(lin)), "translate": tuple(float(v) for v in w[:3, 3])}
    return {"affine": w}


def affine_from_state(state: Mapping[str, Any], ndim: int = 3) -> np.ndarray:
    """Voxel → LPS affine of a layer from its state (``layer.as_layer_data_tuple()[1]``).

    ``metadata["medseg"]["affine"]`` wins when present; otherwise the napari transform
    (``scale``, ``translate``, ``rotate``, ``shear``, ``affine``) is converted, interpreting
    world axes as this module's ``(-z, y, x)`` frame.
    """
    md = (state.get("metadata") or {}).get(METADATA_KEY) or {}
    if md.get("affine") is not None:
        return check_affine(np.asarray(md["affine"], dtype=float))
    from napari.utils.transforms import Affine

    inner = Affine(
        scale=state.get("scale", (1.0,) * ndim),
        translate=state.get("translate", (0.0,) * ndim),
        rotate=state.get("rotate"),
        shear=state.get("shear"),
        ndim=ndim,
    ).affine_matrix
    outer = state.get("affine")
    outer_m = np.eye(ndim + 1) if outer is None else np.asarray(getattr(outer, "affine_matrix", outer), dtype=float)
    full = outer_m @ inner
    if full.shape != (4, 4):
        full = full[-4:, -4:]
    return check_affine(LPS_FROM_WORLD @ full, name="layer transform")


def _layer_state(layer: Any) -> dict[str, Any]:
    return {
        "metadata": layer.metadata,
        "scale": layer.scale,
        "translate": layer.translate,
        "rotate": layer.rotate,
        "shear": layer.shear,
        "affine": layer.affine,
    }


def world_to_index(layer: Any, world_point: Sequence[float], *, clip: bool = False) -> tuple[int, int, int]:
    """Nearest voxel index ``(k, j, i)`` of a napari world point on ``layer``.

    Parameters
    ----------
    layer : napari layer
        A 3D layer placed by this module (or any layer with a world transform).
    world_point : (3,) floats
        napari world coordinates, e.g. ``event.position`` or ``viewer.cursor.position``.
    clip : bool
        Clamp into the array instead of raising for points outside it.

    Raises
    ------
    PromptError
        If the point falls outside the layer's array and ``clip`` is False.
    """
    data = np.asarray(layer.world_to_data(tuple(world_point)), dtype=float)[-3:]
    idx = np.round(data).astype(int)
    shape = np.asarray(layer.data.shape[-3:])
    if np.any(idx < 0) or np.any(idx >= shape):
        if not clip:
            raise PromptError(
                f"world point {tuple(np.round(world_point, 2))} maps to voxel {tuple(int(v) for v in idx)}, "
                f"outside layer {layer.name!r} of shape {tuple(int(s) for s in shape)}; click inside the image"
            )
        idx = np.clip(idx, 0, shape - 1)
    return tuple(int(v) for v in idx)  # type: ignore[return-value]


def index_to_world(affine: np.ndarray, index: Sequence[float]) -> np.ndarray:
    """napari world point ``(w0, w1, w2)`` of a voxel index ``(k, j, i)`` on ``affine``."""
    w = world_affine(affine)
    return w[:3, :3] @ np.asarray(index, dtype=float) + w[:3, 3]


# -- display --------------------------------------------------------------------------------
def window_limits(preset: str) -> tuple[float, float]:
    """Contrast limits (HU) of a CT window preset name (see :data:`CT_PRESETS`)."""
    if preset not in CT_PRESETS:
        raise KeyError(f"unknown CT window {preset!r}; choose one of {sorted(CT_PRESETS)}")
    level, width = CT_PRESETS[preset]
    return level - width / 2.0, level + width / 2.0


def contrast_limits_for(volume: Volume) -> tuple[float, float]:
    """Soft-tissue window for CT, 0.5–99.5 percentile auto-contrast otherwise (MR...).

    A volume without ``Modality`` (NIfTI, NRRD) counts as CT when its values look like HU:
    integers (or integral floats), air near -1000 and water/tissue above 0. The percentiles are
    taken on a regular subsample of about 5e5 voxels (as the auto-contrast shortcut does):
    napari's reader runs on the GUI thread, where a 2e6-voxel sample of a 512 × 512 × 300
    volume cost about 0.12 s.
    """
    modality = str(volume.meta.get("Modality", "")).upper()
    if modality == "CT":
        return window_limits("soft tissue")
    arr = volume.array
    step = max(1, int(np.cbrt(arr.size / 5e5)))
    sample = np.asarray(arr[..., ::step, ::step, ::step], dtype=float)
    lo, hi = np.percentile(sample, [0.5, 99.5]) if sample.size else (0.0, 1.0)
    if not modality and -1100 <= np.percentile(sample, 1) <= -900 and hi > 0 and np.all(np.mod(sample, 1) == 0):
        return window_limits("soft tissue")
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def label_colormap(labels: LabelTable) -> Any:
    """napari ``DirectLabelColormap`` with each label's colour; unknown values grey."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[Any, Any] = {0: np.zeros(4), None: np.array([0.6, 0.6, 0.6, 1.0])}
    for lab in labels:
        colors[lab.index] = np.array([*(c / 255.0 for c in lab.color), 1.0])
    return DirectLabelColormap(color_dict=colors)


def label_features(labels: LabelTable) -> dict[str, list]:
    """Features table (``index``, ``name``) that napari's status bar shows on hover."""
    return {"index": [0, *labels.indices], "name": ["background", *labels.names]}


def _medseg_metadata(volume: Volume, kind: str, **extra: Any) -> dict[str, Any]:
    return {METADATA_KEY: {"kind": kind, "affine": np.array(volume.affine), "meta": dict(volume.meta),
                           "shape": volume.shape, **extra}}


def _name_of(volume: Volume, default: str) -> str:
    for key in ("SeriesDescription", "name"):
        if volume.meta.get(key):
            return str(volume.meta[key])
    src = volume.meta.get("source")
    if src:
        from pathlib import Path

        name = Path(str(src)).name
        for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name
    return default


# -- layer data tuples ----------------------------------------------------------------------
def image_layer_data(volume: Volume, *, name: Optional[str] = None) -> tuple:
    """``(data, kwargs, "image")`` for napari; 4D volumes become one layer per channel."""
    kwargs: dict[str, Any] = {
        "name": name or _name_of(volume, "image"),
        "metadata": _medseg_metadata(volume, "image"),
        "colormap": "gray",
        "contrast_limits": contrast_limits_for(volume),
        **layer_transform_kwargs(volume.affine),
    }
    if volume.array.ndim == 4:
        kwargs["channel_axis"] = 0
        kwargs.pop("contrast_limits")
    return volume.array, kwargs, "image"


def labels_layer_data(segmentation: Segmentation, *, name: Optional[str] = None, opacity: float = 0.5) -> tuple:
    """``(label_map, kwargs, "labels")`` with label names, colours and full geometry."""
    vol = segmentation.label_map
    md = _medseg_metadata(vol, "labels", labels=segmentation.labels.to_dict())
    kwargs: dict[str, Any] = {
        "name": name or _name_of(vol, "labels"),
        "metadata": md,
        "colormap": label_colormap(segmentation.labels),
        "features": label_features(segmentation.labels),
        "opacity": opacity,
        **layer_transform_kwargs(vol.affine),
    }
    return segmentation.array, kwargs, "labels"


def probability_layer_data(
    volume: Volume,
    *,
    name: str = "probability",
    colormap: str = "inferno",
    contrast_limits: tuple[float, float] = (0.0, 1.0),
) -> tuple:
    """``(array, kwargs, "image")`` for a (Z, Y, X) probability or uncertainty heatmap.

    ``contrast_limits`` is given (not computed from the data) so that adding a large heatmap
    costs the GUI thread no pass over the volume.
    """
    kwargs = {
        "name": name,
        "metadata": _medseg_metadata(volume, "heatmap"),
        "colormap": colormap,
        "blending": "additive",
        "opacity": 0.6,
        "contrast_limits": tuple(float(c) for c in contrast_limits),
        **layer_transform_kwargs(volume.affine),
    }
    return volume.array, kwargs, "image"


# -- layers → medseg ------------------------------------------------------------------------
def volume_from_layer(layer: Any) -> Volume:
    """The :class:`Volume` shown by a 3D napari layer (geometry from its metadata or transform)."""
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise GeometryError(f"layer {layer.name!r} has {data.ndim} dimensions {data.shape}; medseg needs (Z, Y, X)")
    affine = affine_from_state(_layer_state(layer))
    md = layer.metadata.get(METADATA_KEY) or {}
    return Volume(data, affine, dict(md.get("meta") or {}))


def labels_from_layer(layer: Any, label_map: Optional[np.ndarray] = None) -> LabelTable:
    """Label table of a labels layer: its medseg metadata, else its features, else generic names.

    Values present in ``label_map`` (default the layer data) but not named get ``label_<n>``.
    """
    md = layer.metadata.get(METADATA_KEY) or {}
    table = LabelTable.from_dict(md["labels"]) if md.get("labels") else LabelTable()
    feats = getattr(layer, "features", None)
    if not len(table) and feats is not None and "index" in feats and "name" in feats:
        items = [(int(i), str(n)) for i, n in zip(feats["index"], feats["name"]) if int(i) != 0]
        table = LabelTable(tuple(Label(i, n, default_color(i)) for i, n in items))
    arr = np.asarray(layer.data if label_map is None else label_map)
    present = np.unique(arr)  # releases the GIL (np.bincount does not)
    for v in (int(x) for x in present if int(x) != 0):
        if v not in table:
            table = table.with_label(Label(v, f"label_{v}", default_color(v)))
    return table


def segmentation_from_layer(layer: Any) -> Segmentation:
    """The :class:`Segmentation` of a labels layer, on the grid it was placed on."""
    vol = volume_from_layer(layer)
    return Segmentation(vol, labels_from_layer(layer, vol.array))


def make_layer(layer_data: tuple) -> Any:
    """A napari layer object from a ``(data, kwargs, layer_type)`` tuple.

    Safe to call in a worker thread: a napari layer model holds no Qt objects (the vispy
    visual and the layer controls are made when the layer is added to a viewer), so the
    widgets build their layers next to the computation and the GUI thread only appends them.
    """
    from napari.layers import Layer

    data, kwargs, layer_type = layer_data
    return Layer.create(data, dict(kwargs), layer_type)


def add_layer_data(viewer: Any, layer_data: Any) -> Any:
    """Add a layer (or a ``(data, kwargs, layer_type)`` tuple) to ``viewer``; returns the layer."""
    from napari.layers import Layer

    layer = layer_data if isinstance(layer_data, Layer) else make_layer(layer_data)
    viewer.add_layer(layer)
    return layer


def add_layer_steps(viewer: Any, layer_data: Any, *, select: bool = True) -> Generator[None, None, Any]:
    """Add a layer over several event-loop turns: ``layer = yield from add_layer_steps(...)``.

    For the GUI steps of a :class:`._worker.TaskRunner` (each ``yield`` ends one event-loop
    turn). ``viewer.add_layer`` runs napari's whole per-layer set-up in one go: the vispy
    visual, the layer's vispy overlays (a labels layer's polygon and brush-stroke overlays
    alone cost napari about as much as its visual), the layer controls, the layer list row,
    the selection change (which shows the new controls) and the first paint of the new visual
    (slice, texture upload, shader compile). Here the same layer is added in stages, one per
    turn, so that no single turn carries all of it:

    0. in a viewer of fewer dimensions (the first layer of an empty viewer), the viewer's
       dimensions are set first, and napari's dimension sliders are built from them in the
       next turn, with the window's painting paused and its repaint in the turn after, as in
       stage 2 (:func:`_dims_steps`; worst turn 94-107 -> 77-82 ms);
    1. the layer is appended hidden, with its visible overlays switched off and without
       becoming the active layer (napari slices nothing for a hidden layer and creates a vispy
       overlay only when the overlay is visible); napari's two slow reactions to the insert,
       the vispy visual and the layer controls, are held back (:class:`_HeldInsert`); what
       is left of the insert (napari's events, the layer-list row; 35-50 ms) is painted
       apart as in stage 2 (click-session start, worst turn 89-109 -> 58-73 ms together with
       the preparation of stage 4);
    2. the vispy visual is built in two turns (napari's vispy layer is made, then napari's
       own reaction maps it into the scene: :meth:`_HeldInsert.make_visual_ahead`), then
       the layer controls, each with the window's painting paused and its repaint in the
       next turn (:func:`_painted_apart`; same-session A/B of the painting pause:
       click-session start 104-109 -> 71-81 ms, consensus 122-137 -> 95-111 ms);
    3. for a layer with text (points), the glyphs that vispy renders on the first draw of any
       text in a canvas are rendered first, one per turn (see :func:`_text_glyph_steps`);
    4. it is made visible, napari slices it and the first half of vispy's first draw (the
       visual's preparation and its shader code, :func:`_prepare_shaders`) runs in the same
       step, with the canvas's painting paused; the first paint (the driver's compile, the
       draw) comes in the next turn. The later parts of a compound visual (points: selection
       markers, highlight lines, text) are shown one per turn after it, so that each part's
       shader program is built in a turn of its own (:func:`_hide_later_parts`);
    5. it becomes the active layer, as napari's own add does (only when ``select``), painted
       apart (napari shows its controls and marks its row: 25-30 ms, then the repaint);
    6. each deferred overlay is switched back on, one per turn (napari then builds its visual),
       after vispy's process-wide line-dash patterns, which the first line overlay of the
       process would otherwise compute in its own turn (:func:`_dash_pattern_steps`); an
       overlay that its layer's mode disables (labels: polygon, brush stroke) is switched
       back on when napari enables it (:func:`_show_when_enabled`).

    Every stage is napari's own work on the real layer, only spread over turns; what is left
    in one turn is at most one of napari's per-layer pieces with, in the stages not painted
    apart, the repaint that follows it (the runner never starts the next step right behind
    a repaint, see :meth:`._worker.TaskRunner._step_later`; figures in
    ``benchmarks/gui_responsiveness.py``). The end state is that of ``viewer.add_layer``
    (with ``select=False``: the active layer is left alone), except that the visuals of the
    overlays of modes not in use are built when the mode is first used. The layer is not made active when
    it was removed meanwhile, and whatever is still deferred is restored if the steps are
    abandoned (an error in a later step of the task).

    Parameters
    ----------
    viewer : napari.Viewer
    layer_data : napari layer or ``(data, kwargs, layer_type)``
        A layer made with :func:`make_layer` (in a worker thread), or a tuple.
    select : bool
        Make the new layer the active one (napari's behaviour on insert).

    Returns
    -------
    napari layer
        The added layer (the generator's return value).
    """
    from napari.layers import Layer

    layer = layer_data if isinstance(layer_data, Layer) else make_layer(layer_data)
    if viewer.dims.ndim < layer.ndim:
        yield from _dims_steps(viewer, layer.ndim)
    layers = viewer.layers
    overlays = [ov for ov in getattr(layer, "_overlays", {}).values() if getattr(ov, "visible", False)]
    show = bool(layer.visible)
    activate = getattr(layers, "_activate_on_insert", None)
    held = _HeldInsert(viewer, layer)
    parts: list = []
    for ov in overlays:
        ov.visible = False
    if show:
        layer.visible = False

    def append() -> None:  # napari's insert, without activation and the held-back set-up
        if activate is not None:
            layers._activate_on_insert = False
        try:
            with held:
                viewer.add_layer(layer)
        finally:
            if activate is not None:
                layers._activate_on_insert = activate

    try:
        yield from _painted_apart(viewer, append)
        if held.pending:
            yield
            held.make_visual_ahead()
        while held.pending:
            yield
            yield from _painted_apart(viewer, held.run_next)
        if show:
            yield
            if not _without_text(layer):
                yield from _text_glyph_steps(viewer, layer)
            parts = _hide_later_parts(viewer, layer)
            show = False
            yield from _painted_apart(viewer, lambda: _show_prepared(viewer, layer), canvas_only=True)
            while parts:
                yield
                parts.pop(0).visible = True
        if select and layer in layers:
            yield
            yield from _painted_apart(viewer, lambda: setattr(layers.selection, "active", layer))
        if overlays:
            yield from _dash_pattern_steps()
        for ov in [ov for ov in overlays if getattr(ov, "enabled", True) is False]:
            overlays.remove(ov)
            _show_when_enabled(ov)
        while overlays:
            yield
            overlays.pop(0).visible = True
    finally:  # abandoned (or failed) part-way: leave the layer as napari would have
        try:
            held.finish()
        except Exception:  # noqa: BLE001 - e.g. the viewer's window was closed meanwhile
            log.debug("held-back layer set-up not run", exc_info=True)
        for part in parts:
            part.visible = True
        if show:
            layer.visible = True
        for ov in overlays:
            ov.visible = True
    return layer


#: napari's Qt reactions to the viewer's dimensions (``QtDims``, napari 0.9): event, method
_QT_DIMS_REACTIONS = (("ndim", "_update_nsliders"), ("current_step", "_update_slider"),
                      ("range", "_update_range"), ("ndisplay", "_update_display"),
                      ("order", "_update_display"), ("last_used", "_on_last_used_changed"))


def _dims_steps(viewer: Any, ndim: int) -> Generator[None, None, None]:
    """Stage 0 of :func:`add_layer_steps`: the viewer's dimensions, then its sliders.

    Setting ``viewer.dims.ndim`` on an empty viewer costs napari about 0.1 s in one go: the
    model's validation and events (~30 ms), then ``QtDims._update_nsliders``, which removes
    every slider and builds them all again (~75 ms). Here the Qt reactions are held back
    (blocked on their emitters, in place) while the model changes, and the sliders are
    built from the new model in the next turn, painted apart (:func:`_painted_apart`).
    ``_update_nsliders`` refreshes everything the held reactions would have (display, range,
    slider positions, last-used style), and nothing reads the sliders in between. If any of
    these private napari names is missing, the dimensions are set in one go as before.
    """
    qt_dims = getattr(getattr(getattr(viewer, "window", None), "_qt_viewer", None), "dims", None)
    held: list = []
    if qt_dims is not None and callable(getattr(qt_dims, "_update_nsliders", None)):
        for event, name in _QT_DIMS_REACTIONS:
            emitter = getattr(viewer.dims.events, event, None)
            if emitter is None or not hasattr(emitter, "block") or not _is_connected(emitter, qt_dims, name):
                held = []
                break
            held.append((emitter, getattr(qt_dims, name)))
    if not held:
        yield from _painted_apart(viewer, lambda: setattr(viewer.dims, "ndim", ndim))
        yield
        return
    for emitter, cb in held:
        emitter.block(cb)
    pending = True  # napari's reactions held back and its sliders not built yet
    try:
        viewer.dims.ndim = ndim
        yield
        for emitter, cb in held:
            emitter.unblock(cb)
        pending = False  # from here napari's sliders follow the model by themselves
        yield from _painted_apart(viewer, qt_dims._update_nsliders)
        yield
    finally:  # abandoned before the sliders were built: leave them as napari would have
        if pending:
            for emitter, cb in held:
                emitter.unblock(cb)
            try:
                qt_dims._update_nsliders()
            except Exception:  # noqa: BLE001 - e.g. the viewer's window was closed meanwhile
                log.debug("dimension sliders not rebuilt", exc_info=True)


def _painted_apart(viewer: Any, action: Callable[[], Any], *, canvas_only: bool = False) -> Generator[None, None, Any]:
    """Run ``action`` with the viewer's window not painting; its repaint comes one turn later.

    Qt repaints what a step changed (a new layer-list row, new layer controls, the canvas)
    right after the step, in the same event-loop turn, so that a turn costs the step plus the
    repaint. With the main window's updates switched off during the step and back on one
    turn later, the step and the repaint are two turns (the repaint is of the whole window,
    as ``setUpdatesEnabled(True)`` asks for: about twice a canvas repaint under a software
    renderer). With ``canvas_only``, for a step that changes only what the canvas shows,
    only the canvas is paused and repainted. Updates are switched back on however the steps
    end (an error in ``action``, the generator closed). Nothing is paused without a Qt window.
    """
    window = _canvas_widget(viewer) if canvas_only else getattr(getattr(viewer, "window", None), "_qt_window", None)
    if window is None or not hasattr(window, "setUpdatesEnabled") or not window.updatesEnabled():
        return action()
    window.setUpdatesEnabled(False)
    try:
        result = action()
        yield
        return result
    finally:
        window.setUpdatesEnabled(True)


def _canvas_widget(viewer: Any) -> Any:
    """The Qt widget of the viewer's canvas (None without a Qt window)."""
    return getattr(getattr(getattr(getattr(viewer, "window", None), "_qt_viewer", None), "canvas", None),
                   "native", None)


def canvas_painted_later(viewer: Any, action: Callable[[], Any]) -> Any:
    """Run ``action`` now and the canvas's repaint in a later event-loop turn; returns its result.

    The GUI thread's counterpart of :func:`_painted_apart` outside a task's steps (a click's
    prompt point: napari's points update and the viewer's extent, 25-35 ms, then the repaint,
    25-45 ms under a software renderer). The canvas's updates are switched back on by a 1 ms
    timer, which fires in a later pass of the event loop than the one running ``action``;
    when the canvas is already paused (several points in one turn) the pause in place covers
    them all. Without a Qt canvas ``action`` just runs.
    """
    from qtpy.QtCore import QTimer

    canvas = _canvas_widget(viewer)
    if canvas is None or not hasattr(canvas, "setUpdatesEnabled") or not canvas.updatesEnabled():
        return action()
    canvas.setUpdatesEnabled(False)

    def resume() -> None:
        try:
            canvas.setUpdatesEnabled(True)
        except RuntimeError:  # the viewer was closed meanwhile
            pass

    try:
        return action()
    finally:
        QTimer.singleShot(1, resume)


def _show_when_enabled(overlay: Any) -> None:
    """Switch a deferred, disabled layer overlay back on when napari enables it.

    A labels layer's polygon and brush-stroke overlays are enabled only in the polygon and
    paint modes; napari builds an overlay's vispy visual as soon as it is visible, enabled or
    not (the polygon's costs about as much as the layer's own visual). Left hidden until its
    ``enabled`` event says the user switched to that mode, it is built then, when it is
    first drawn, instead of in the add.
    """

    def on_enabled(enabled: Any = None) -> None:
        if overlay.enabled:
            overlay.events.enabled.disconnect(on_enabled)
            overlay.visible = True

    overlay.events.enabled.connect(on_enabled)


class _HeldInsert:
    """napari's slow reactions to a layer insert (vispy visual, layer controls), run later.

    ``with held: viewer.add_layer(layer)`` blocks, for that one insert, the two callbacks of
    ``viewer.layers.events.inserted`` that build the layer's vispy visual
    (``QtViewer._on_add_layer_change``) and its layer controls
    (``QtLayerControlsContainer._add``) and keeps the insert event; :meth:`run_next` then
    runs them with that event, one per call (one per event-loop turn). Until then napari
    already treats the layer as one being inserted (its scene-graph update skips layers
    without a visual). Should the layer be removed or selected before they ran (the two
    napari reactions that need the visual and the controls), they run first: a guard
    callback is put ahead of napari's own on ``layers.events.removed`` and
    ``layers.selection.events.changed`` (napari's ``connect`` keeps plugin callbacks after
    its own, so the guard goes in front through the emitter's callback lists).
    :meth:`finish` runs whatever is left. These are private napari names (napari 0.9): when
    one is missing, nothing is held back and the insert is napari's own.
    """

    def __init__(self, viewer: Any, layer: Any) -> None:
        self.layer = layer
        self.layers = viewer.layers
        self.pending: list = []
        self._event: Any = None
        self._guards: list = []
        qt_viewer = getattr(getattr(viewer, "window", None), "_qt_viewer", None)
        self._qt_viewer = qt_viewer
        self._visual_cb = getattr(qt_viewer, "_on_add_layer_change", None)
        self._visual: Any = None  # napari's vispy layer, made a turn ahead of its mapping
        guarded = (self.layers.events.removed, self.layers.selection.events.changed)
        if not all(hasattr(em, a) for em in guarded
                   for a in ("_callbacks", "_callback_refs", "_callback_pass_event", "_normalize_cb")):
            return
        for owner, name in ((qt_viewer, "_on_add_layer_change"), (getattr(qt_viewer, "controls", None), "_add")):
            if owner is not None and _is_connected(self.layers.events.inserted, owner, name):
                self.pending.append(getattr(owner, name))

    def __enter__(self) -> "_HeldInsert":
        if not self.pending:
            return self
        emitter = self.layers.events.inserted
        for cb in self.pending:
            emitter.block(cb)
        emitter.connect(self._keep_event, position="last")
        self._guards = [(self.layers.events.removed, self._on_removed),
                        (self.layers.selection.events.changed, self._on_selection)]
        for emitter_, cb in self._guards:
            _connect_ahead(emitter_, cb)
        return self

    def __exit__(self, *exc: Any) -> None:
        if not self.pending:
            return
        emitter = self.layers.events.inserted
        emitter.disconnect(self._keep_event)
        for cb in self.pending:
            emitter.unblock(cb)
        if self._event is None:  # the insert did not happen (an error): nothing to catch up
            self.pending = []
            self._disconnect_guards()

    def _keep_event(self, event: Any) -> None:
        if event.value is self.layer:
            self._event = event

    def _on_removed(self, event: Any) -> None:
        if event.value is self.layer and self._event is not None:
            self.finish()

    def _on_selection(self, event: Any = None) -> None:
        if self._event is not None and self.layer in self.layers.selection:
            self.finish()

    def run_next(self) -> None:
        """Run the next held-back callback (none left: nothing to do)."""
        if self.pending and self._event is not None:
            cb = self.pending.pop(0)
            if cb == self._visual_cb and self._visual is not None:
                with self._visual_made_ahead():
                    cb(self._event)
            else:
                cb(self._event)
        if not self.pending:
            self._disconnect_guards()

    def make_visual_ahead(self) -> bool:
        """The first half of napari's visual reaction, ahead of it; whether it was made.

        napari's visual reaction (``QtViewer._add_layer``) makes the vispy layer (its 2D and
        3D nodes, textures, shader programs; ``create_vispy_layer``) and then maps it into the
        canvas's scene (overlays, transforms, scene-graph order), each about half of the
        reaction's 40-70 ms. This makes the vispy layer, with napari's own call; napari's
        reaction, when :meth:`run_next` runs it, is handed that layer
        (:meth:`_visual_made_ahead`). The vispy layer is not in the scene until then, so
        nothing is drawn differently meanwhile. Without those napari names nothing is made
        and the reaction runs in one go.
        """
        if self._visual is not None or self._event is None or self._visual_cb is None \
                or not self.pending or self.pending[0] != self._visual_cb:
            return False
        try:
            import napari._qt.qt_viewer as qt_viewer_module

            make = qt_viewer_module.create_vispy_layer
            self._visual = make(self.layer, font_info=self._qt_viewer.canvas.font_info())
        except Exception:  # noqa: BLE001 - other napari internals: napari's reaction in one go
            log.debug("vispy layer not made ahead", exc_info=True)
            self._visual = None
        return self._visual is not None

    @contextlib.contextmanager
    def _visual_made_ahead(self) -> Iterator[None]:
        """napari's ``create_vispy_layer`` hands over the vispy layer made ahead, once."""
        import napari._qt.qt_viewer as qt_viewer_module

        made = self._visual
        original = qt_viewer_module.create_vispy_layer
        taken = []

        def create_vispy_layer(layer: Any, *args: Any, **kwargs: Any) -> Any:
            if layer is self.layer and not taken:
                taken.append(made)
                return made
            return original(layer, *args, **kwargs)

        qt_viewer_module.create_vispy_layer = create_vispy_layer
        try:
            yield
        finally:
            qt_viewer_module.create_vispy_layer = original
            self._visual = None
            if not taken:  # napari made its own: the one made ahead lets go of the layer
                log.debug("vispy layer made ahead was not used; closed")
                made.close()

    def finish(self) -> None:
        """Run every held-back callback that has not run yet."""
        while self.pending and self._event is not None:
            self.run_next()
        self._disconnect_guards()

    def _disconnect_guards(self) -> None:
        guards, self._guards = self._guards, []
        for emitter, cb in guards:
            emitter.disconnect(cb)


def _connect_ahead(emitter: Any, callback: Any) -> None:
    """Connect ``callback`` to a napari event emitter ahead of every callback (napari's too).

    ``EventEmitter.connect`` places a plugin's callback after napari's own; this inserts it
    at the front of the emitter's three parallel callback lists, in the form ``connect``
    stores (from the emitter's ``_normalize_cb``), so that ``disconnect`` removes it.
    """
    stored, pass_event = emitter._normalize_cb(callback)
    if stored in emitter._callbacks:
        return
    emitter._callbacks.insert(0, stored)
    emitter._callback_refs.insert(0, None)
    emitter._callback_pass_event.insert(0, pass_event)


def _is_connected(emitter: Any, owner: Any, name: str) -> bool:
    """Whether the bound method ``owner.name`` is connected to a napari event emitter."""
    for cb in getattr(emitter, "callbacks", ()):
        if isinstance(cb, tuple) and len(cb) >= 2 and callable(cb[0]) and cb[0]() is owner and cb[1] == name:
            return True
        if getattr(cb, "__self__", None) is owner and getattr(cb, "__name__", None) == name:
            return True
    return False


def _show_prepared(viewer: Any, layer: Any) -> int:
    """Show a layer and prepare its visual's first draw (:func:`_prepare_shaders`), unpainted.

    For stage 4 of :func:`add_layer_steps`, run painted apart: napari slices the layer and
    hands the slice to its visual when it is made visible; the first half of vispy's first
    draw follows here, so that the turn with the first paint is left with the driver's
    shader compile and the paint itself. Returns the number of shader programs built.
    """
    layer.visible = True
    try:
        node = viewer.window._qt_viewer.canvas.layer_to_visual[layer].node
    except Exception:  # noqa: BLE001 - no Qt window, other napari internals
        return 0
    return _prepare_shaders(node)


def _preparable_visual_types() -> tuple:
    """vispy visuals whose ``_prepare_draw`` only sets their data, uniforms, textures and shader
    hooks from state they already hold, so that their draw can be prepared ahead: vispy's
    markers and image visuals (napari's image and labels visuals derive from the latter)."""
    try:
        from vispy.visuals.image import ImageVisual
        from vispy.visuals.markers import MarkersVisual
    except ImportError:  # another vispy: its visuals are drawn as they are
        return ()
    return (MarkersVisual, ImageVisual)


def _prepare_shaders(visual: Any) -> int:
    """Build a visual's shader code ahead of its first draw; the number of programs built.

    On its first draw a vispy visual prepares itself (``_prepare_draw``: data, textures,
    shader hooks) and generates its GLSL in Python (vispy's shader compiler: templates,
    renaming, parsing the variables; 5-25 ms per program) before the driver compiles it.
    This runs that first half of vispy's draw, the visual's own ``_prepare_draw`` then
    ``build_if_needed`` of its program, for each visible part of ``visual`` (the parts of a
    compound visual, recursively) of the types of :func:`_preparable_visual_types`; the draw that
    follows finds the code built and its state current, and builds again only what changed
    meanwhile (vispy's own bookkeeping). Visuals of other types are left to their draw, as
    are parts without data (``_prepare_draw`` returns False: vispy would not draw them).
    """
    kinds = _preparable_visual_types()
    built = 0
    stack = [visual]
    while stack:
        v = stack.pop()
        if not getattr(v, "visible", False):
            continue
        if hasattr(v, "_subvisuals"):
            stack.extend(v._subvisuals)
            continue
        program = getattr(v, "_program", None)
        if not isinstance(v, kinds) or not getattr(program, "_need_build", False):
            continue
        try:
            if v._prepare_draw(view=v) is False:
                continue
            program.build_if_needed()
            built += 1
        except Exception:  # noqa: BLE001 - left to the draw, which reports its own errors
            log.debug("shader code of %r not prepared ahead", v, exc_info=True)
    return built


def _hide_later_parts(viewer: Any, layer: Any) -> list:
    """Hide all but the first visible part of a layer's compound vispy visual; returns them.

    vispy builds a visual's shader program (GLSL parsing in Python, then the driver's
    compile) on its first draw; a points layer's visual is a compound of four (markers,
    selection markers, highlight lines, text), so its first paint builds them all in one
    turn (0.1-0.15 s under a software renderer). With the later parts hidden for the first
    paint, the caller shows them back one per turn, each built on its own first draw.

    The text part of a layer without text is not returned: it stays hidden until the
    layer's text changes (any ``layer.text`` event shows it again). napari gives vispy a
    one-character placeholder ``''`` then, which draws no pixel but costs the text shader
    program, the largest of the four (about 0.1 s to build). Nothing is hidden for a simple
    visual or other napari internals (``canvas.layer_to_visual``).
    """
    try:
        node = viewer.window._qt_viewer.canvas.layer_to_visual[layer].node
        parts = [v for v in getattr(node, "_subvisuals", ()) if v.visible]
    except Exception:  # noqa: BLE001 - no Qt window, other napari internals
        return []
    later = parts[1:]
    for part in later:
        part.visible = False
    text_part = getattr(node, "text", None)
    if text_part in later and _without_text(layer):
        later.remove(text_part)

        def reveal(event: Any = None) -> None:
            text_part.visible = True
            layer.text.events.disconnect(reveal)

        layer.text.events.connect(reveal)
    return later


def _without_text(layer: Any) -> bool:
    """Whether a points/shapes layer shows no text (napari's test for its text placeholder)."""
    text = getattr(layer, "text", None)
    if text is None or not hasattr(text, "events"):
        return False
    return (not text.visible) or getattr(text.string, "constant", None) == ""


_DASH_PATTERNS_DONE = False


def _dash_pattern_steps() -> Generator[None, None, None]:
    """Compute, one per step, the line-dash patterns of vispy's ``DashAtlas``.

    Every vispy agg line (a labels layer's polygon overlay) makes a ``DashAtlas`` whose 13
    dash patterns vispy computes in a Python loop (about 0.1 s under a software renderer)
    and caches for the process (``functools.lru_cache`` on ``_make_pattern``): the first
    such overlay of the process pays it in one turn. Here the same cached function is
    called for the atlas's patterns ahead, one per turn; the patterns are read from
    vispy's own ``DashAtlas`` (not copied). Nothing happens after the first time, or when
    vispy's internals differ (private names of vispy 0.17).
    """
    global _DASH_PATTERNS_DONE
    if _DASH_PATTERNS_DONE:
        return
    _DASH_PATTERNS_DONE = True
    try:
        from vispy.visuals.line import dash_atlas

        class _Recorder(dash_atlas.DashAtlas):
            def __init__(self) -> None:
                self.patterns: list = []
                super().__init__()

            def __setitem__(self, key: Any, value: Any) -> None:
                self.patterns.append(value)

        recorder = _Recorder()
        length = recorder._data.shape[1]
        make = dash_atlas._make_pattern
    except Exception:  # noqa: BLE001 - other vispy internals: leave it to vispy
        log.debug("vispy dash patterns not precomputed", exc_info=True)
        return
    for pattern, caps in recorder.patterns:
        try:
            make(length, pattern, caps)
        except Exception:  # noqa: BLE001
            log.debug("vispy dash pattern not precomputed", exc_info=True)
            return
        yield


def _same_grid(layer: Any, data: Any, metadata: Mapping[str, Any]) -> bool:
    old = (layer.metadata or {}).get(METADATA_KEY) or {}
    new = (metadata or {}).get(METADATA_KEY) or {}
    if old.get("affine") is None or new.get("affine") is None:
        return False
    return tuple(layer.data.shape) == tuple(data.shape) and bool(
        np.allclose(np.asarray(old["affine"], dtype=float), np.asarray(new["affine"], dtype=float)))


def reusable_layer(viewer: Any, layer: Any, layer_data: tuple) -> bool:
    """Whether a widget's previous output ``layer`` can show ``layer_data`` in place.

    True when ``layer`` is still in ``viewer``, of the same kind, still has the name the
    widget gave it (renaming a result layer keeps it: a re-run then adds a new one), and
    lies on the same grid (shape and voxel → LPS affine). Updating a layer in place costs the
    GUI thread a re-slice; a new layer costs napari 0.1-0.2 s of visuals and controls.
    """
    if layer is None or layer not in viewer.layers:
        return False
    data, kwargs, layer_type = layer_data
    if layer._type_string != layer_type or layer.name != kwargs.get("name"):
        return False
    return _same_grid(layer, data, kwargs.get("metadata") or {})


def update_layer(layer: Any, layer_data: tuple) -> Any:
    """Show ``layer_data`` in an existing layer on the same grid (see :func:`reusable_layer`).

    The array, the medseg metadata and, for labels, the colours and names (only when the label
    table changed: a new colormap re-maps the slice) are replaced; the user's display settings
    (opacity, visibility, blending) are kept. Image contrast limits are set when given.
    """
    data, kwargs, layer_type = layer_data
    metadata = kwargs.get("metadata") or {}
    if layer_type == "labels":
        old_table = ((layer.metadata or {}).get(METADATA_KEY) or {}).get("labels")
        new_table = (metadata.get(METADATA_KEY) or {}).get("labels")
        if old_table != new_table:
            if "colormap" in kwargs:
                layer.colormap = kwargs["colormap"]
            if "features" in kwargs:
                layer.features = kwargs["features"]
    layer.metadata = dict(metadata)
    layer.data = data
    if layer_type == "image" and kwargs.get("contrast_limits") is not None:
        lo, hi = (float(c) for c in kwargs["contrast_limits"])
        layer.contrast_limits_range = (lo, hi)
        layer.contrast_limits = (lo, hi)
    return layer


def show_layer(viewer: Any, previous: Any, layer_data: tuple, layer: Any = None) -> Any:
    """Update ``previous`` in place when :func:`reusable_layer`, else add a new layer.

    ``layer`` is the layer object made from ``layer_data`` in a worker thread
    (:func:`make_layer`), used when a new layer is needed. A ``previous`` layer that still has
    the new layer's name but lies on another grid is removed first (it is the stale output of
    the same action). Returns the layer that shows the data. The synchronous form of
    :func:`show_layer_steps` (its steps run back to back), for callers outside a GUI task.
    """
    steps = show_layer_steps(viewer, previous, layer_data, layer)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


#: characters vispy's text visual measures on its first draw (vertical alignment), whatever the text
_TEXT_ALIGNMENT_GLYPHS = "ÅÉÑŐjgpqy"


def _text_glyph_steps(viewer: Any, layer: Any) -> Generator[None, None, None]:
    """Render, one per step, the glyphs a layer's vispy text visual needs on its first draw.

    A points layer draws a vispy ``Text`` visual even without any text, and its first draw
    renders the signed-distance-field glyphs of :data:`_TEXT_ALIGNMENT_GLYPHS` on the CPU into
    the canvas's font atlas (shared by all text of the canvas, so paid once per viewer): about
    0.2 s in one paint under a software renderer. Rendering them ahead, one glyph per
    event-loop turn, leaves that paint with the shaders and the upload. Nothing is done (no
    step) when the layer has no text visual, the glyphs are there already, or napari's
    internals differ from napari 0.9's (private attributes).
    """
    try:
        canvas = viewer.window._qt_viewer.canvas
        font = canvas.layer_to_visual[layer].node.text._font
        missing = [c for c in _TEXT_ALIGNMENT_GLYPHS if c not in font._glyphs]
    except Exception:  # noqa: BLE001 - no text visual, no Qt window, other napari internals
        return
    for char in missing:
        try:
            font[char]
        except Exception:  # noqa: BLE001 - leave it to vispy's own first draw
            log.debug("glyph %r not pre-rendered", char, exc_info=True)
            return
        yield


def show_layer_steps(viewer: Any, previous: Any, layer_data: tuple, layer: Any = None, *,
                     select: bool = True) -> Generator[None, None, Any]:
    """:func:`show_layer` as GUI steps: ``layer = yield from show_layer_steps(...)``.

    An in-place update is one step, the canvas's repaint in the next turn (napari slices
    the new data in the step; :func:`_painted_apart`); removing a stale ``previous`` layer
    takes a turn of its own, and a new layer is added by :func:`add_layer_steps`.
    """
    if reusable_layer(viewer, previous, layer_data):
        return (yield from _painted_apart(viewer, lambda: update_layer(previous, layer_data), canvas_only=True))
    if previous is not None and previous in viewer.layers and previous.name == layer_data[1].get("name"):
        viewer.layers.remove(previous)
        yield
    return (yield from add_layer_steps(viewer, layer if layer is not None else layer_data, select=select))


def viewer_camera(viewer: Any) -> Any:
    """The viewer's camera: ``viewer.scene.camera`` (napari >= 0.9), else ``viewer.camera``."""
    scene = getattr(viewer, "scene", None)
    camera = getattr(scene, "camera", None)
    return camera if camera is not None else viewer.camera
