"""npe2 writers: a labels layer → NIfTI / NRRD (+ ``.labels.json``) or DICOM SEG.

The grid comes from ``metadata["medseg"]["affine"]`` (set by this plugin's readers and
widgets), so a label map written back lands exactly on the source image's grid; layers made
elsewhere fall back to their napari transform (see :func:`._layers.affine_from_state`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, Optional

import numpy as np

log = logging.getLogger(__name__)


def segmentation_from_state(data: Any, meta: Mapping[str, Any]):
    """:class:`~medseg.core.segmentation.Segmentation` from a labels layer's data and state."""
    from medseg.core.segmentation import Segmentation
    from medseg.core.volume import Volume

    from medseg_napari._layers import METADATA_KEY, affine_from_state, labels_from_layer

    arr = np.asarray(data)
    affine = affine_from_state(meta, ndim=arr.ndim)
    md = (meta.get("metadata") or {}).get(METADATA_KEY) or {}
    layer = SimpleNamespace(metadata=meta.get("metadata") or {}, features=meta.get("features"), data=arr,
                            name=meta.get("name", "labels"))
    table = labels_from_layer(layer, arr)
    return Segmentation(Volume(arr, affine, dict(md.get("meta") or {})), table)


def portable_state(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a layer state that :func:`segmentation_from_state` needs, as plain data.

    No napari objects (colormaps, DataFrames, transforms), so it pickles to a helper process
    without importing napari there.
    """
    out: dict[str, Any] = {"name": meta.get("name", "labels"), "metadata": dict(meta.get("metadata") or {})}
    for key in ("scale", "translate", "rotate", "shear", "affine"):
        v = meta.get(key)
        if v is not None:
            out[key] = np.asarray(getattr(v, "affine_matrix", v), dtype=float)
    feats = meta.get("features")
    if feats is not None and len(feats) and "index" in feats and "name" in feats:
        out["features"] = {"index": [int(i) for i in feats["index"]], "name": [str(n) for n in feats["name"]]}
    return out


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write a labels layer to NIfTI or NRRD with its label-table sidecar; returns the paths."""
    from medseg.io import sidecar_path, write_segmentation

    seg = segmentation_from_state(data, meta)
    # napari's save dialog has already asked before replacing a file
    out = write_segmentation(seg, path, overwrite=True)
    log.info("wrote %s", out)
    return [str(out), str(sidecar_path(out))]


def dicom_source(metadata: Mapping[str, Any]) -> Optional[Any]:
    """The DICOM source of a layer: its slice files in array z order, else its DICOM folder.

    Looks in the layer's own medseg metadata (an image read from DICOM) and in
    ``metadata["medseg"]["source"]`` (labels derived from such an image by a medseg widget).
    """
    from medseg_napari._layers import METADATA_KEY

    md = (metadata or {}).get(METADATA_KEY) or {}
    src = md.get("source") or {}
    for m in (md.get("meta") or {}, src.get("meta") or {}):
        files = m.get("files")
        if files and str(m.get("format", "dicom")) == "dicom" and all(f is not None for f in files):
            return [str(f) for f in files]
    for candidate in (md.get("dicom_folder"), src.get("dicom_folder")):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    return None


def _dicom_source_or_raise(meta: dict, what: str) -> Any:
    """The layer's source DICOM series (its files or folder); a named error when it has none."""
    from medseg.core.errors import InputError

    source = dicom_source(meta.get("metadata") or {})
    if source is None:
        raise InputError(
            f"labels layer {meta.get('name', '')!r} has no DICOM source series; {what} needs one. "
            "Segment an image opened from a DICOM folder, or save as NIfTI/NRRD instead"
        )
    return source


def write_rtstruct_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write a labels layer as an RTSTRUCT referencing its source DICOM series.

    Raises
    ------
    InputError
        When the layer was not derived from a DICOM series (its metadata names no source).
    """
    from medseg.export import write_rtstruct

    source = _dicom_source_or_raise(meta, "RTSTRUCT")
    out = write_rtstruct(segmentation_from_state(data, meta), path, source=source)
    return [str(out or path)]


def write_dicom_seg_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write a labels layer as a DICOM SEG referencing its source DICOM series.

    Raises
    ------
    InputError
        When the layer was not derived from a DICOM series (its metadata names no source).
    """
    from medseg.export import write_dicom_seg

    source = _dicom_source_or_raise(meta, "DICOM SEG")
    out = write_dicom_seg(segmentation_from_state(data, meta), path, source=source)
    return [str(out or path)]
