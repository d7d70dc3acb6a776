"""``medseg info PATH``: what a DICOM folder, an image or a label map holds.

* DICOM folder or file: every series (UID, modality, description, images, grid, warnings,
  why it cannot load) and every skipped file with its reason; headers only, no pixels.
* Image (.nii[.gz], .nrrd, .mha): shape, spacing, origin, orientation code, direction, dtype,
  from the header alone (nothing is decompressed); ``--values`` also reads the voxels for the
  value range (within the memory limit of :mod:`medseg.io.limits`).
* Label map (``--labels``, or a ``.labels.json`` sidecar beside the file): the grid plus, per
  label, its voxel count and volume in mL.

``--json`` prints the same facts as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="describe a DICOM folder, an image or a label map",
                       description="List DICOM series (with geometry and warnings) or describe an image / label map.")
    p.add_argument("path", help="DICOM folder or file, .nii[.gz], .nrrd, .mha")
    p.add_argument("--labels", action="store_true",
                   help="treat the file as a label map (automatic when a .labels.json sidecar exists)")
    p.add_argument("--series", help="only this SeriesInstanceUID (DICOM)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--values", action="store_true",
                   help="also read the voxels of an image for its value range (default: header only)")
    p.set_defaults(func=run)


def _grid(volume: Any) -> dict[str, Any]:
    return {
        "shape_zyx": list(volume.shape),
        "spacing_zyx_mm": [round(v, 5) for v in volume.spacing],
        "origin_lps_mm": [round(v, 3) for v in volume.origin],
        "orientation": volume.orientation,
        "direction_columns_zyx": np.round(volume.direction, 5).T.tolist(),
        "dtype": str(volume.array.dtype),
    }


def describe_dicom(path: Path, series_uid: str | None = None) -> dict[str, Any]:
    """Series and skipped files of a DICOM folder (headers only)."""
    from medseg.cli._progress import tqdm_progress
    from medseg.io.dicom import scan_dicom, select_series

    with tqdm_progress("scanning") as progress:
        scan = scan_dicom(path, progress=progress)
    series = scan.series
    if series_uid is not None:
        series = [select_series(scan, series_uid)]
    default = select_series(scan).series_uid if scan.series else None
    return {
        "path": str(path), "kind": "dicom",
        "series": [s.summary() | {"default": s.series_uid == default} for s in series],
        "skipped": [{"path": s.path, "reason": s.reason} for s in scan.skipped],
    }


def describe_image(path: Path, values: bool = False) -> dict[str, Any]:
    """Grid and dtype from the header only; with ``values``, the voxels are read for the range."""
    from medseg.io import read_header, read_volume

    info = {"path": str(path), "kind": "image", **_grid(read_header(path))}
    if values:
        arr = read_volume(path).array
        info["value_range"] = [float(np.nanmin(arr)), float(np.nanmax(arr))]
    return info


def describe_labels(path: Path) -> dict[str, Any]:
    from medseg.io import read_segmentation

    seg = read_segmentation(path)
    counts = np.bincount(seg.array.ravel().astype(np.int64))
    ml = seg.label_map.voxel_volume_ml
    names = {l.index: l.name for l in seg.labels}
    rows = [{"index": int(i), "name": names.get(int(i), f"(not in label table)"), "voxels": int(c),
             "volume_ml": round(float(c) * ml, 4)} for i, c in enumerate(counts) if i > 0 and c > 0]
    absent = [{"index": l.index, "name": l.name, "voxels": 0, "volume_ml": 0.0}
              for l in seg.labels if l.index >= len(counts) or counts[l.index] == 0]
    return {"path": str(path), "kind": "label_map", **_grid(seg.label_map),
            "labels": sorted(rows + absent, key=lambda r: r["index"])}


def _print_text(info: dict[str, Any]) -> None:
    print(f"{info['path']}  ({info['kind']})")
    if info["kind"] == "dicom":
        if not info["series"]:
            print("  no image series")
        for s in info["series"]:
            mark = " [default]" if s.get("default") else ""
            print(f"  series {s['series_uid']}{mark}")
            number = "-" if s["series_number"] is None else s["series_number"]
            print(f"    {s['modality'] or '?'} '{s['description']}'  #{number}  "
                  f"{s['n_images']} images in {s['n_files']} files")
            if s["shape_zyx"]:
                print(f"    grid (Z, Y, X) {tuple(s['shape_zyx'])}  spacing (z, y, x) mm {tuple(s['spacing_zyx_mm'])}  "
                      f"origin LPS {tuple(s['origin_lps_mm'])}  orientation {s['orientation']}")
            if s["problem"]:
                print(f"    cannot load: {s['problem']}")
            for w in s["warnings"]:
                print(f"    warning: {w}")
        if info["skipped"]:
            print(f"  skipped {len(info['skipped'])} file(s):")
            for s in info["skipped"]:
                print(f"    {s['path']}: {s['reason']}")
        return
    print(f"  shape (Z, Y, X) {tuple(info['shape_zyx'])}  dtype {info['dtype']}")
    print(f"  spacing (z, y, x) mm {tuple(info['spacing_zyx_mm'])}")
    print(f"  origin LPS mm {tuple(info['origin_lps_mm'])}  orientation {info['orientation']}")
    print(f"  direction (LPS columns for z, y, x) {info['direction_columns_zyx']}")
    if info["kind"] == "image":
        if "value_range" in info:
            print(f"  value range {info['value_range'][0]:g} .. {info['value_range'][1]:g}")
        return
    print(f"  {'index':>5}  {'name':<24} {'voxels':>10} {'volume mL':>11}")
    for r in info["labels"]:
        print(f"  {r['index']:>5}  {r['name']:<24} {r['voxels']:>10} {r['volume_ml']:>11.3f}")


def run(args: argparse.Namespace) -> int:
    from medseg.io import image_format, sidecar_path

    path = Path(args.path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    fmt = image_format(path)
    if fmt == "dicom":
        info = describe_dicom(path, args.series)
    elif args.labels or sidecar_path(path).exists():
        info = describe_labels(path)
    else:
        info = describe_image(path, values=args.values)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_text(info)
    return 0
