"""The DICOM series a Volume was read from: one typed, immutable record.

:func:`~medseg.io.dicom.read_dicom` attaches a :class:`DicomSource` to the Volume it returns
(``volume.dicom_source``). It holds what a DICOM SEG or RTSTRUCT must reference and where each
array slice came from: the files in array ``z`` order, the Study, Series and Frame of
Reference UIDs, and per slice the SOP Instance/Class UIDs and the ``ImagePositionPatient`` read
from the file. It holds no affine: the Volume's affine is the geometry, and
:meth:`DicomSource.check_grid` verifies that a grid is the one these slices lie on.

The record is tied to one grid. :class:`~medseg.core.volume.Volume` checks it on construction,
:meth:`~medseg.core.volume.Volume.with_array` keeps it (same grid), and every transformation that
makes a new grid (crop, resample, reorient, :func:`~medseg.io.dicom.orthogonalize`) builds a
new Volume without it, so an export can never use stale per-slice positions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from medseg.core.errors import DicomError, GeometryError
from medseg.io.dicom._geometry import affine_from_dicom

__all__ = ["SourceSlice", "DicomSource", "source_from_images", "dicom_source_from_files"]

log = logging.getLogger(__name__)

#: mm: a slice may lie this far from its grid plane (or 1 % of the slice step, if larger);
#: the reader accepts at most max(0.01 mm, 1 %) along the stack
POSITION_TOL_MM = 0.05
#: mm: tolerance on the in-plane columns of the affine (cosine x pixel spacing)
INPLANE_TOL_MM = 0.01


@dataclass(frozen=True)
class SourceSlice:
    """One acquired source image behind one array slice.

    Attributes
    ----------
    file : str
        The DICOM file.
    sop_instance_uid, sop_class_uid : str
        What a SEG frame or an RTSTRUCT contour references.
    position : (3,) floats
        ``ImagePositionPatient`` of the image as stored in the file: LPS ``(x, y, z)`` mm of
        the centre of its first pixel.
    frame : int or None
        Frame index (0-based) within a multi-frame file, else None.
    """

    file: str
    sop_instance_uid: str
    sop_class_uid: str
    position: tuple[float, float, float]
    frame: Optional[int] = None


@dataclass(frozen=True)
class DicomSource:
    """The source series of a Volume read from DICOM, slice by slice in array ``z`` order.

    Attributes
    ----------
    study_uid, series_uid, frame_of_reference_uid : str
        As stored in the files (``""`` when de-identification emptied them).
    modality : str
    orientation : (6,) floats
        ``ImageOrientationPatient``: unit row cosines (direction of increasing column index
        ``i``) then column cosines (increasing row index ``j``), LPS.
    pixel_spacing : (2,) floats
        ``PixelSpacing`` in mm: ``(between rows = y, between columns = x)``.
    rows, columns : int
    slices : tuple of SourceSlice or None
        ``slices[k]`` is array slice ``k``; None where the reader interpolated a missing or
        irregular slice (no source image exists for it).
    """

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    modality: str
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    slices: tuple[Optional[SourceSlice], ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)`` of the grid the record describes."""
        return (len(self.slices), self.rows, self.columns)

    @property
    def files(self) -> list[Optional[str]]:
        """Slice files in array ``z`` order (None for interpolated slices)."""
        return [s.file if s else None for s in self.slices]

    @property
    def sop_instance_uids(self) -> list[Optional[str]]:
        """SOP Instance UIDs in array ``z`` order (None for interpolated slices)."""
        return [s.sop_instance_uid if s else None for s in self.slices]

    @property
    def interpolated(self) -> list[int]:
        """Array slices with no source image."""
        return [k for k, s in enumerate(self.slices) if s is None]

    @property
    def positions(self) -> np.ndarray:
        """``(Z, 3)`` ImagePositionPatient per slice, LPS mm (NaN rows for interpolated slices)."""
        return np.array([s.position if s else (np.nan,) * 3 for s in self.slices], dtype=float)

    def check_grid(self, shape: Sequence[int], affine: np.ndarray, *, what: str = "label map") -> None:
        """Raise unless the grid ``(shape, affine)`` is the one these source slices lie on.

        Parameters
        ----------
        shape : (3,) ints
            ``(Z, Y, X)``.
        affine : (4, 4) ndarray
            Voxel ``(k, j, i)`` → LPS mm.
        what : str
            Names the grid in the message.

        Raises
        ------
        GeometryError
            Another shape, other in-plane axes or spacing (beyond 0.01 mm), or an acquired
            slice ``k`` whose ImagePositionPatient is more than ``max(0.05 mm, 1 % of the
            slice step)`` from where the grid puts voxel ``(k, 0, 0)``.
        """
        a = np.asarray(affine, dtype=float)
        shape = tuple(int(s) for s in shape)
        if shape != self.shape:
            raise GeometryError(f"{what} grid {shape} does not match the source series grid {self.shape} "
                                f"(slices, rows, columns); {_FIX}")
        # the in-plane columns (y, x) of the one DICOM affine (position and step do not enter them)
        inplane = affine_from_dicom(self.orientation, self.pixel_spacing, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))[:3, 1:3]
        if not np.allclose(a[:3, 1:3], inplane, atol=INPLANE_TOL_MM):
            raise GeometryError(
                f"{what} in-plane axes {np.round(a[:3, 1:3].T, 4).tolist()} (y, x) do not match the source "
                f"series' ImageOrientationPatient x PixelSpacing {np.round(inplane.T, 4).tolist()}; {_FIX}")
        self._check_positions(a, what)

    def _check_positions(self, a: np.ndarray, what: str) -> None:
        """Every acquired slice's ImagePositionPatient on the grid's plane ``k`` (see check_grid)."""
        pos = self.positions
        expected = a[:3, 3] + np.arange(len(pos))[:, None] * a[:3, 0]
        off = np.linalg.norm(pos - expected, axis=1)
        tol = max(POSITION_TOL_MM, 0.01 * float(np.linalg.norm(a[:3, 0])))
        bad = np.flatnonzero(~np.isnan(off) & (off > tol))
        if bad.size:
            k = int(bad[0])
            raise GeometryError(
                f"{what} grid does not match the source series grid: slice {k} ({self.slices[k].file}) lies at "  # type: ignore[union-attr]
                f"{np.round(pos[k], 3).tolist()} mm, the {what} puts slice {k} at "
                f"{np.round(expected[k], 3).tolist()} ({bad.size} slice(s) off by more than {tol:.3f} mm). "
                f"Either the labels are on another grid ({_FIX}), or the source list has a missing or "
                f"irregular slice or slices out of order (pass the series folder or a Volume from read_volume)")


_FIX = "segment the source series itself (or resample the labels onto it) before exporting DICOM"


def source_from_images(images: Sequence, *, study_uid: str, series_uid: str, frame_of_reference_uid: str,
                       modality: str) -> Optional[DicomSource]:
    """A record from the reader's image records (one per array slice, None for interpolated ones).

    Parameters
    ----------
    images : sequence of ImageRecord or None
        :class:`medseg.io.dicom._headers.ImageRecord` per array slice, in array ``z`` order.
    study_uid, series_uid, frame_of_reference_uid, modality : str

    Returns
    -------
    DicomSource or None
        None when the images carry no patient geometry (a 2D image without
        ImagePositionPatient/ImageOrientationPatient/PixelSpacing).
    """
    acquired = [im for im in images if im is not None]
    if not acquired or any(im.position is None or im.orientation is None or im.pixel_spacing is None
                           for im in acquired):
        return None
    first = acquired[0]
    slices = tuple(None if im is None else SourceSlice(
        file=im.file.path, sop_instance_uid=im.sop_uid, sop_class_uid=im.file.sop_class,
        position=tuple(float(v) for v in im.position), frame=im.frame) for im in images)
    return DicomSource(
        study_uid=study_uid, series_uid=series_uid, frame_of_reference_uid=frame_of_reference_uid,
        modality=modality, orientation=tuple(float(v) for v in first.orientation),
        pixel_spacing=(float(first.pixel_spacing[0]), float(first.pixel_spacing[1])),
        rows=first.file.rows, columns=first.file.columns, slices=slices)  # type: ignore[arg-type]


def dicom_source_from_files(files: Sequence[str]) -> DicomSource:
    """A record for slice files given in array ``z`` order, from their headers only (no pixels).

    The order is taken as given (it is what the caller claims the array order is);
    :meth:`DicomSource.check_grid` then tells whether the files lie on a grid.

    Raises
    ------
    DicomError
        A file is not a readable DICOM image, lacks patient geometry, or the files belong to
        several series or differ in orientation, pixel spacing or size.
    """
    from medseg.io.dicom._headers import Skip, read_header

    headers = []
    for f in files:
        try:
            headers.append(read_header(str(f)))
        except Skip as exc:
            raise DicomError(f, f"cannot read the source DICOM header ({exc})",
                             "pass the original, unmodified source series") from exc
    series = {h.series_uid for h in headers}
    if len(series) != 1:
        raise DicomError(files[0], f"source files belong to {len(series)} series", "pass one series")
    _check_same_plane_layout(headers, files)
    h0 = headers[0]
    record = source_from_images([h.images[0] for h in headers], study_uid=h0.study_uid, series_uid=h0.series_uid,
                                frame_of_reference_uid=h0.frame_of_reference_uid, modality=h0.modality)
    if record is None:
        raise DicomError(files[0], "source slice lacks geometry (ImagePositionPatient, ImageOrientationPatient "
                                   "or PixelSpacing)",
                         "DICOM SEG/RTSTRUCT need ImagePositionPatient, ImageOrientationPatient and PixelSpacing")
    return record


def _check_same_plane_layout(headers: Sequence, files: Sequence) -> None:
    """All files share orientation, pixel spacing and size; else a GeometryError naming the file."""
    first = headers[0].images[0]
    for f, h in zip(files, headers):
        im = h.images[0]
        if im.orientation is None or first.orientation is None:
            continue
        if not np.allclose(im.orientation, first.orientation, atol=1e-4):
            raise GeometryError(f"{f}: orientation differs from the first slice's")
        if (im.file.rows, im.file.columns) != (first.file.rows, first.file.columns) or (
                im.pixel_spacing != first.pixel_spacing):
            raise GeometryError(f"{f}: size or PixelSpacing differs from the first slice's")
