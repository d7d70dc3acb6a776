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

import logging
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from medseg.core.errors import GeometryError, PromptError
from medseg.core.geometry import check_affine
from medseg.core.labels import Label, LabelTable, default_color
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume

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
    "AXIS_LABELS",
    "VIEW_ORDERS",
    "patient_position_text",
    "slider_position",
    "widen_contrast_range",
    "contrast_limits_for",
    "window_limits",
    "add_layer_data",
    "is_layer_type",
    "make_layer",
    "reusable_layer",
    "update_layer",
    "show_layer",
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


#: napari world axes (-z, y, x) named by the slices they step through and their direction
AXIS_LABELS = ("axial S→I", "coronal A→P", "sagittal R→L")
#: ``viewer.dims.order`` of each standard view (see the module docstring)
VIEW_ORDERS = {"axial": (0, 1, 2), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}


def patient_position_text(world_point: Sequence[float]) -> str:
    """A napari world point as patient coordinates in mm: ``R 12.3  A 45.6  S 78.9 mm`` (LPS signs)."""
    x, y, z = (LPS_FROM_WORLD @ np.array([*(float(v) for v in world_point[-3:]), 1.0]))[:3]
    return (f"{'L' if x >= 0 else 'R'} {abs(x):.1f}  {'P' if y >= 0 else 'A'} {abs(y):.1f}  "
            f"{'S' if z >= 0 else 'I'} {abs(z):.1f} mm")


def slider_position(viewer: Any, world_point: Sequence[float], axis: int = 0) -> int:
    """The number napari's slider of ``axis`` shows at ``world_point`` (0-based step index)."""
    rng = viewer.dims.range[axis]
    step = float(rng.step) if float(rng.step) else 1.0
    return int(round((float(world_point[axis]) - float(rng.start)) / step))


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


#: values 1..N get medseg's palette colour even before they are named, so that a label painted
#: with a new number is drawn in a distinct colour (not napari's grey default)
PALETTE_VALUES = 255


def label_colormap(labels: LabelTable) -> Any:
    """napari ``DirectLabelColormap``: each label's colour, medseg's palette for other values 1..255."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[Any, Any] = {0: np.zeros(4), None: np.array([0.6, 0.6, 0.6, 1.0])}
    for value in range(1, PALETTE_VALUES + 1):
        colors[value] = np.array([*(c / 255.0 for c in default_color(value)), 1.0])
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

    Safe to call in a worker thread: a napari layer model holds no Qt objects (the visual and
    the layer controls are made when the layer is added to a viewer).
    """
    from napari.layers import Layer

    data, kwargs, layer_type = layer_data
    layer = Layer.create(data, dict(kwargs), layer_type)
    if layer_type == "image" and kwargs.get("contrast_limits") is not None:
        widen_contrast_range(layer)
    return layer


def data_range(data: Any, sample: int = 500_000) -> tuple[float, float]:
    """Min and max of an array from a regular subsample of about ``sample`` values."""
    arr = np.asarray(data) if not hasattr(data, "ndim") else data
    step = max(1, int(np.cbrt(arr.size / sample))) if arr.ndim >= 3 else 1
    sub = np.asarray(arr[..., ::step, ::step, ::step] if arr.ndim >= 3 else arr)
    if not sub.size:
        return 0.0, 1.0
    lo, hi = float(np.nanmin(sub)), float(np.nanmax(sub))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def widen_contrast_range(layer: Any) -> None:
    """Let an image layer's contrast slider reach the data's range, not only the preset window.

    napari makes the slider's range equal to the contrast limits a layer was created with
    (a CT window); the limits are kept, the range grows to the data's min and max.
    """
    lo, hi = layer.contrast_limits_range
    dlo, dhi = data_range(layer.data)
    if dlo < lo or dhi > hi:
        limits = tuple(layer.contrast_limits)
        layer.contrast_limits_range = (min(lo, dlo), max(hi, dhi))
        layer.contrast_limits = limits


#: napari layer type strings (as in ``(data, kwargs, layer_type)`` tuples) → class names
_LAYER_CLASSES = {"image": "Image", "labels": "Labels", "points": "Points", "shapes": "Shapes",
                  "surface": "Surface", "vectors": "Vectors", "tracks": "Tracks"}


def is_layer_type(layer: Any, layer_type: str) -> bool:
    """Whether ``layer`` is a napari layer of ``layer_type`` (``"image"``, ``"labels"``, ...)."""
    import napari.layers

    cls = getattr(napari.layers, _LAYER_CLASSES.get(layer_type, ""), None)
    return cls is not None and isinstance(layer, cls)


def add_layer_data(viewer: Any, layer_data: Any, *, select: bool = True) -> Any:
    """Add a layer (or a ``(data, kwargs, layer_type)`` tuple) to ``viewer``; returns the layer.

    With ``select=False`` the viewer's active layer is left as it was (napari makes a new
    layer the active one).
    """
    from napari.layers import Layer

    layer = layer_data if isinstance(layer_data, Layer) else make_layer(layer_data)
    active = viewer.layers.selection.active
    viewer.add_layer(layer)
    if not select and active is not None and active in viewer.layers:
        viewer.layers.selection.active = active
    return layer


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
    lies on the same grid (shape and voxel → LPS affine).
    """
    if layer is None or layer not in viewer.layers:
        return False
    data, kwargs, layer_type = layer_data
    if not is_layer_type(layer, layer_type) or layer.name != kwargs.get("name"):
        return False
    return _same_grid(layer, data, kwargs.get("metadata") or {})


def update_layer(layer: Any, layer_data: tuple) -> Any:
    """Show ``layer_data`` in an existing layer on the same grid (see :func:`reusable_layer`).

    The array, the medseg metadata and, for labels, the colours and names (only when the label
    table changed) are replaced; the user's display settings (opacity, visibility, blending)
    are kept. Image contrast limits are set when given.
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
        layer.contrast_limits_range = (min(lo, layer.contrast_limits_range[0]), max(hi, layer.contrast_limits_range[1]))
        layer.contrast_limits = (lo, hi)
    return layer


def show_layer(viewer: Any, previous: Any, layer_data: tuple, layer: Any = None, *, select: bool = True) -> Any:
    """Update ``previous`` in place when :func:`reusable_layer`, else add a new layer.

    ``layer`` is the layer object made from ``layer_data`` in a worker thread
    (:func:`make_layer`), used when a new layer is needed. A ``previous`` layer that still has
    the new layer's name but lies on another grid is removed first (it is the stale output of
    the same action). Returns the layer that shows the data.
    """
    if reusable_layer(viewer, previous, layer_data):
        return update_layer(previous, layer_data)
    if previous is not None and previous in viewer.layers and previous.name == layer_data[1].get("name"):
        viewer.layers.remove(previous)
    return add_layer_data(viewer, layer if layer is not None else layer_data, select=select)


def viewer_camera(viewer: Any) -> Any:
    """The viewer's camera: ``viewer.scene.camera`` (napari >= 0.9), else ``viewer.camera``."""
    scene = getattr(viewer, "scene", None)
    camera = getattr(scene, "camera", None)
    return camera if camera is not None else viewer.camera
