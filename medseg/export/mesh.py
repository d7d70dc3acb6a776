"""Surface meshes per label (STL) in patient millimetres.

Each label's mask is zero-padded (so every surface is closed), meshed at the 0.5 iso-level with
:func:`skimage.measure.marching_cubes` in voxel indices ``(k, j, i)``, and the vertices are
mapped through the label map's affine to LPS mm. An affine with negative determinant (a
mirrored grid, e.g. x running to patient Right) turns the triangles inside out, so the winding
is fixed afterwards: triangles are ordered so that normals point outwards (positive enclosed
volume).

STL has no coordinate-system field; files are LPS (as DICOM and 3D Slicer's default), which the
binary header states (``SPACE=LPS``). Pass ``space="RAS"`` for tools that expect RAS.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from medseg.core.errors import DependencyError, InputError
from medseg.export._common import exported_labels, safe_name
from medseg.io.atomic import atomic_path
from medseg.core.progress import CancelCallback, ProgressCallback, StepProgress
from medseg.core.segmentation import Segmentation

__all__ = ["label_mesh", "write_stl", "signed_volume"]

log = logging.getLogger(__name__)


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Volume enclosed by a closed triangle mesh (positive when normals point outwards)."""
    a, b, c = (vertices[faces[:, n]] for n in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def label_mesh(mask: np.ndarray, affine: np.ndarray, *, step_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Closed surface of a (Z, Y, X) boolean mask in LPS mm.

    Parameters
    ----------
    mask : (Z, Y, X) bool ndarray
    affine : (4, 4) ndarray
        Voxel ``(k, j, i)`` → LPS mm.
    step_size : int
        Marching-cubes step in voxels (1 = full resolution; larger is coarser and faster).

    Returns
    -------
    vertices : (V, 3) float ndarray
        LPS ``(x, y, z)`` mm.
    faces : (F, 3) int ndarray
        Outward-oriented triangles.

    Raises
    ------
    InputError
        Empty mask.
    """
    from skimage.measure import marching_cubes

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise InputError("cannot mesh an empty mask; the label has no voxels")
    # crop to the bounding box (plus the padding) to keep memory bounded
    nz = np.nonzero(mask)
    lo = np.array([a.min() for a in nz])
    hi = np.array([a.max() for a in nz]) + 1
    crop = np.pad(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], 1).astype(np.float32)
    verts, faces, _, _ = marching_cubes(crop, 0.5, step_size=step_size, allow_degenerate=False)
    kji = verts + lo - 1.0
    xyz = kji @ np.asarray(affine, float)[:3, :3].T + np.asarray(affine, float)[:3, 3]
    faces = faces.astype(np.int64)
    if signed_volume(xyz, faces) < 0:
        faces = faces[:, ::-1].copy()
    return xyz, faces


def write_stl(
    segmentation: Segmentation,
    folder: str | Path,
    *,
    step_size: int = 1,
    space: Literal["LPS", "RAS"] = "LPS",
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> dict[int, Path]:
    """Write one binary STL per label present, ``<index>_<name>.stl``, in patient mm.

    Parameters
    ----------
    segmentation : Segmentation
    folder : str or Path
        Created if needed.
    step_size : int
        Marching-cubes step in voxels.
    space : {"LPS", "RAS"}
        World frame of the vertices (LPS, the DICOM frame, by default).
    progress, cancel : callables, optional
        One step per label.

    Returns
    -------
    dict
        Label index → path written.
    """
    try:
        from stl import mesh as stl_mesh
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise DependencyError("STL export needs numpy-stl: pip install 'numpy-stl>=3.1'") from exc
    if space not in ("LPS", "RAS"):
        raise InputError(f"space must be 'LPS' or 'RAS', got {space!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = exported_labels(segmentation)
    steps = StepProgress(len(labels), "STL meshes", progress=progress, cancel=cancel)
    out = {}
    for label in labels:
        verts, faces = label_mesh(segmentation.array == label.index, segmentation.affine, step_size=step_size)
        if space == "RAS":
            verts = verts * np.array([-1.0, -1.0, 1.0])  # a rotation: winding stays outward
        m = stl_mesh.Mesh(np.zeros(len(faces), dtype=stl_mesh.Mesh.dtype))
        m.vectors[:] = verts[faces]
        m.update_normals()
        path = folder / f"{label.index}_{safe_name(label.name)}.stl"
        # binary STL written directly: numpy-stl's writer stamps the time into the header,
        # and identical meshes must give identical files
        header = f"medseg {label.name} SPACE={space}".encode("ascii", "replace")[:80].ljust(80, b" ")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(header + np.uint32(len(m.data)).tobytes() + m.data.astype(m.data.dtype.newbyteorder("<")).tobytes())
        out[label.index] = path
        steps.step()
    log.info("wrote %d STL meshes to %s", len(out), folder)
    return out
