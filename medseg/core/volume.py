"""``Volume``: an image array plus the affine that places it in the patient (LPS) frame."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Protocol, Sequence

import numpy as np

from medseg.core import geometry
from medseg.core.errors import GeometryError, InputError

__all__ = ["Volume", "SourceRecord"]


class SourceRecord(Protocol):
    """A record of the acquired images behind a grid (:class:`medseg.io.dicom.DicomSource`)."""

    def check_grid(self, shape: Sequence[int], affine: np.ndarray, *, what: str = ...) -> None:
        """Raise :class:`~medseg.core.errors.GeometryError` unless ``(shape, affine)`` is the record's grid."""


@dataclass(frozen=True, eq=False)
class Volume:
    """An image on a grid placed in patient space.

    Parameters
    ----------
    array : (Z, Y, X) or (C, Z, Y, X) ndarray
        Voxel values in array order. CT values are Hounsfield units.
    affine : (4, 4) ndarray
        Maps the voxel index ``(k, j, i)`` (array order) to LPS millimetres ``(x, y, z)``.
        Required: there is no identity default.
    meta : mapping, optional
        Provenance only (source path, Modality, UIDs, warnings); never geometry.
    dicom_source : DicomSource, optional
        The DICOM series the array was read from (:class:`medseg.io.dicom.DicomSource`:
        files, UIDs and per-slice positions), set by the DICOM reader. It must describe this
        grid (checked here). :meth:`with_array` keeps it; a new grid (crop, resample,
        reorient) is a new Volume without it, so exports never see stale slice positions.

    Notes
    -----
    ``spacing``, ``origin`` and ``direction`` are derived from ``affine``. Instances are
    immutable; use :meth:`with_array` to put new values on the same grid.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: Mapping[str, Any] = field(default_factory=dict)
    dicom_source: Optional[SourceRecord] = None

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim not in (3, 4):
            raise InputError(
                f"Volume array must be (Z, Y, X) or (C, Z, Y, X), got {arr.ndim} dimensions "
                f"with shape {arr.shape}; add a singleton axis with array[None] for a 2D image"
            )
        if 0 in arr.shape:
            raise InputError(f"Volume array has an empty axis: shape {arr.shape}")
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "affine", geometry.check_affine(self.affine))
        object.__setattr__(self, "meta", dict(self.meta))
        if self.dicom_source is not None:
            self.dicom_source.check_grid(self.shape, self.affine, what="volume")

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_spacing(
        cls,
        array: np.ndarray,
        spacing: Sequence[float],
        *,
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        direction: np.ndarray | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> "Volume":
        """Build a Volume from spacing ``(z, y, x)`` mm, LPS origin and direction columns.

        See :func:`medseg.core.geometry.make_affine` for the default (axial) direction.
        """
        return cls(array, geometry.make_affine(spacing, origin, direction), meta or {})

    def with_array(self, array: np.ndarray, **meta: Any) -> "Volume":
        """A new Volume with ``array`` on this grid (spatial shape must match); keeps ``dicom_source``."""
        arr = np.asarray(array)
        if arr.shape[-3:] != self.shape:
            raise GeometryError(
                f"array spatial shape {arr.shape[-3:]} must match the volume's {self.shape}"
            )
        return Volume(arr, self.affine, {**self.meta, **meta}, self.dicom_source)

    # -- derived geometry ---------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(Z, Y, X)``."""
        return tuple(int(s) for s in self.array.shape[-3:])  # type: ignore[return-value]

    @property
    def channels(self) -> int:
        """Number of channels (1 for a (Z, Y, X) array)."""
        return 1 if self.array.ndim == 3 else int(self.array.shape[0])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm, array order ``(z, y, x)``."""
        return geometry.spacing_of(self.affine)

    @property
    def origin(self) -> tuple[float, float, float]:
        """LPS ``(x, y, z)`` mm of voxel ``(0, 0, 0)``'s centre."""
        return geometry.origin_of(self.affine)

    @property
    def direction(self) -> np.ndarray:
        """(3, 3) unit LPS columns, one per array axis ``(z, y, x)``."""
        return geometry.direction_of(self.affine)

    @property
    def orientation(self) -> str:
        """Three letters, e.g. ``'SPL'``: where increasing (z, y, x) indices point."""
        return geometry.orientation_code(self.affine)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` voxel indices ``(k, j, i)`` to LPS ``(x, y, z)`` mm."""
        return geometry.apply_affine(self.affine, index)

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map ``(N, 3)`` LPS points ``(x, y, z)`` mm to continuous indices ``(k, j, i)``."""
        return geometry.apply_affine(np.linalg.inv(self.affine), points)

    def contains_index(self, index: Sequence[float]) -> bool:
        """True when a voxel index ``(k, j, i)`` lies inside the array."""
        idx = np.asarray(index, dtype=float)
        return bool(np.all(idx >= -0.5) and np.all(idx < np.asarray(self.shape) - 0.5))

    def same_grid(self, other: "Volume", *, atol: float = 1e-3) -> bool:
        """True when ``other`` has the same spatial shape and affine (within ``atol`` mm)."""
        return geometry.same_grid(self.shape, self.affine, other.shape, other.affine, atol=atol)

    def require_same_grid(self, other: "Volume", *, what: str = "label map", atol: float = 1e-3) -> None:
        """Raise :class:`GeometryError` naming both grids unless they match."""
        if not self.same_grid(other, atol=atol):
            raise GeometryError(
                f"{what} grid {other.shape} spacing {np.round(other.spacing, 4).tolist()} "
                f"origin {np.round(other.origin, 3).tolist()} must match the image grid "
                f"{self.shape} spacing {np.round(self.spacing, 4).tolist()} origin "
                f"{np.round(self.origin, 3).tolist()}; resample it onto the image first"
            )

    def __repr__(self) -> str:
        return (
            f"Volume(shape={self.array.shape}, dtype={self.array.dtype}, "
            f"spacing={tuple(round(s, 4) for s in self.spacing)}, "
            f"origin={tuple(round(o, 3) for o in self.origin)}, orientation={self.orientation!r})"
        )
