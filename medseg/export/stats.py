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

from medseg.errors import InputError
from medseg.io import csvsafe
from medseg.io.atomic import atomic_path
from medseg.segmentation import Segmentation
from medseg.volume import Volume

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
    if image is not None:
        segmentation.label_map.require_same_grid(image, what="image")
        values = np.asarray(image.array if image.array.ndim == 3 else image.array[0], dtype=np.float64)
    vml = segmentation.label_map.voxel_volume_ml
    flat = arr.ravel()
    n = max(int(flat.max(initial=0)), segmentation.labels.max_index) + 1
    counts = np.bincount(flat, minlength=n)
    if image is not None:
        v = values.ravel()
        sums = np.bincount(flat, weights=v, minlength=n)
        sq = np.bincount(flat, weights=v * v, minlength=n)
    indices = [i for i in range(1, n) if counts[i] or (include_absent and i in segmentation.labels)]
    objects = ndimage.find_objects(arr)
    structure = ndimage.generate_binary_structure(3, _STRUCTURES[connectivity])
    out_labels = []
    for index in indices:
        name = segmentation.labels[index].name if index in segmentation.labels else f"label_{index}"
        entry: dict = {"index": index, "name": name, "voxels": int(counts[index]),
                       "volume_ml": float(counts[index] * vml), "mean": None, "std": None, "min": None, "max": None}
        items = []
        if counts[index]:
            if image is not None:
                mean = sums[index] / counts[index]
                entry["mean"] = float(mean)
                entry["std"] = float(np.sqrt(max(sq[index] / counts[index] - mean * mean, 0.0)))
            box = objects[index - 1]
            mask = arr[box] == index
            if image is not None:
                vals = values[box][mask]
                entry["min"], entry["max"] = float(vals.min()), float(vals.max())
            comp, ncomp = ndimage.label(mask, structure=structure)
            sizes = np.bincount(comp.ravel(), minlength=ncomp + 1)[1:]
            centres = np.asarray(ndimage.center_of_mass(mask, comp, range(1, ncomp + 1)), dtype=float).reshape(-1, 3)
            centres += np.array([s.start for s in box], dtype=float)
            lps = centres @ segmentation.affine[:3, :3].T + segmentation.affine[:3, 3]
            for rank, c in enumerate(np.argsort(-sizes, kind="stable"), start=1):
                items.append({"id": rank, "voxels": int(sizes[c]), "volume_ml": float(sizes[c] * vml),
                              "centroid_lps_mm": [round(float(x), 3) for x in lps[c]]})
        entry["instances"] = {"count": len(items), "connectivity": connectivity, "items": items}
        out_labels.append(entry)
    return {
        "spacing_zyx_mm": [float(s) for s in segmentation.label_map.spacing],
        "voxel_volume_ml": vml,
        "labels": out_labels,
    }


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
