"""Per-label statistics: volume, voxel count, intensity, and lesion instances.

Instances are the connected components of each label (26-connectivity by default), with their
voxel count, volume in mL and centroid in LPS mm. Written as JSON (everything) and two CSV
tables (one row per label; one row per instance).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from medseg.core.errors import InputError
from medseg.io import csvsafe
from medseg.io.atomic import atomic_path
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume

__all__ = ["label_statistics", "write_statistics"]

log = logging.getLogger(__name__)

_STRUCTURES = {6: 1, 18: 2, 26: 3}


def label_statistics(
    segmentation: Segmentation,
    image: Optional[Volume] = None,
    *,
    connectivity: Literal[6, 18, 26] = 26,
    include_absent: bool = True,
) -> dict:
    """Measure every label of a segmentation.

    Parameters
    ----------
    segmentation : Segmentation
        (Z, Y, X) label map.
    image : Volume, optional
        Intensity image on the same grid (e.g. HU); adds mean, std, min and max per label.
    connectivity : {6, 18, 26}
        Neighbourhood defining connected instances.
    include_absent : bool
        Also list labels of the table that have no voxel (volume 0).

    Returns
    -------
    dict
        ``{"spacing_zyx_mm", "voxel_volume_ml", "labels": [{"index", "name", "voxels",
        "volume_ml", "mean", "std", "min", "max", "instances": {"count", "items": [{"id",
        "voxels", "volume_ml", "centroid_lps_mm": [x, y, z]}]}}]}``; instances are sorted by
        decreasing size. Intensity keys are ``None`` without an image or for an empty label.

    Raises
    ------
    InputError
        Unknown connectivity.
    GeometryError
        ``image`` is on another grid.
    """
    from scipy import ndimage

    if connectivity not in _STRUCTURES:
        raise InputError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    arr = segmentation.array
    values = None
    if image is not None:
        segmentation.label_map.require_same_grid(image, what="image")
        values = np.asarray(image.array if image.array.ndim == 3 else image.array[0], dtype=np.float64)
    flat = arr.ravel()
    n = max(int(flat.max(initial=0)), segmentation.labels.max_index) + 1
    counts = np.bincount(flat, minlength=n)
    moments = _intensity_sums(flat, values, n)
    indices = [i for i in range(1, n) if counts[i] or (include_absent and i in segmentation.labels)]
    objects = ndimage.find_objects(arr)  # bounding box of label i at i - 1
    out_labels = []
    for index in indices:
        name = segmentation.labels[index].name if index in segmentation.labels else f"label_{index}"
        entry = _label_entry(segmentation, index, name, int(counts[index]), moments, values, objects, connectivity)
        out_labels.append(entry)
    return {
        "spacing_zyx_mm": [float(s) for s in segmentation.label_map.spacing],
        "voxel_volume_ml": segmentation.label_map.voxel_volume_ml,
        "labels": out_labels,
    }


def _intensity_sums(flat: np.ndarray, values: Optional[np.ndarray], n: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Per-label sums of values and of squared values (None without an image)."""
    if values is None:
        return None
    v = values.ravel()
    return np.bincount(flat, weights=v, minlength=n), np.bincount(flat, weights=v * v, minlength=n)


def _label_entry(segmentation: Segmentation, index: int, name: str, count: int,
                 moments: Optional[tuple[np.ndarray, np.ndarray]], values: Optional[np.ndarray], objects: list,
                 connectivity: int) -> dict:
    """One label's statistics: size, intensities (with an image) and connected instances."""
    vml = segmentation.label_map.voxel_volume_ml
    entry: dict = {"index": index, "name": name, "voxels": count,
                   "volume_ml": float(count * vml), "mean": None, "std": None, "min": None, "max": None}
    items: list[dict] = []
    if count:
        if moments is not None:
            mean = moments[0][index] / count
            entry["mean"] = float(mean)
            entry["std"] = float(np.sqrt(max(moments[1][index] / count - mean * mean, 0.0)))
        box = objects[index - 1]
        mask = segmentation.array[box] == index
        if values is not None:
            vals = values[box][mask]
            entry["min"], entry["max"] = float(vals.min()), float(vals.max())
        items = _instances(mask, box, segmentation.affine, vml, connectivity)
    entry["instances"] = {"count": len(items), "connectivity": connectivity, "items": items}
    return entry


def _instances(mask: np.ndarray, box: tuple, affine: np.ndarray, vml: float, connectivity: int) -> list[dict]:
    """Connected components of ``mask`` (the label inside its bounding ``box``), largest first,
    with voxel count, volume in mL and centroid in LPS mm."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(3, _STRUCTURES[connectivity])
    comp, ncomp = ndimage.label(mask, structure=structure)
    sizes = np.bincount(comp.ravel(), minlength=ncomp + 1)[1:]
    centres = np.asarray(ndimage.center_of_mass(mask, comp, range(1, ncomp + 1)), dtype=float).reshape(-1, 3)
    centres += np.array([s.start for s in box], dtype=float)
    lps = centres @ affine[:3, :3].T + affine[:3, 3]
    return [{"id": rank, "voxels": int(sizes[c]), "volume_ml": float(sizes[c] * vml),
             "centroid_lps_mm": [round(float(x), 3) for x in lps[c]]}
            for rank, c in enumerate(np.argsort(-sizes, kind="stable"), start=1)]


def _labels_csv(stats: dict) -> str:
    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\n")
    w.writerow(["index", "name", "voxels", "volume_ml", "mean", "std", "min", "max", "instances"])
    for e in stats["labels"]:
        w.writerow([e["index"], e["name"], e["voxels"], f"{e['volume_ml']:.6g}",
                    *("" if e[k] is None else f"{e[k]:.6g}" for k in ("mean", "std", "min", "max")),
                    e["instances"]["count"]])
    return buf.getvalue()


def _instances_csv(stats: dict) -> str:
    buf = io.StringIO()
    w = csvsafe.writer(buf, lineterminator="\n")
    w.writerow(["index", "name", "instance", "voxels", "volume_ml", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm"])
    for e in stats["labels"]:
        for it in e["instances"]["items"]:
            w.writerow([e["index"], e["name"], it["id"], it["voxels"], f"{it['volume_ml']:.6g}", *it["centroid_lps_mm"]])
    return buf.getvalue()


def write_statistics(stats: dict, folder: str | Path, *, stem: str = "stats") -> dict[str, Path]:
    """Write ``stats`` (from :func:`label_statistics`) as ``<stem>.json``, ``<stem>.csv`` and
    ``<stem>_instances.csv`` in ``folder``; atomically. Returns the paths by kind."""
    folder = Path(folder)
    paths = {"json": folder / f"{stem}.json", "csv": folder / f"{stem}.csv",
             "instances_csv": folder / f"{stem}_instances.csv"}
    texts = {"json": json.dumps(stats, indent=2) + "\n", "csv": _labels_csv(stats),
             "instances_csv": _instances_csv(stats)}
    for kind, path in paths.items():
        with atomic_path(path) as tmp:
            tmp.write_text(texts[kind])
    return paths
