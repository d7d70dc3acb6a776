"""Label map export: NIfTI / NRRD / MHA plus the label-table JSON beside it."""

from __future__ import annotations

from pathlib import Path

from medseg.core.errors import FileFormatError
from medseg.io import IMAGE_SUFFIXES, sidecar_path, write_segmentation
from medseg.io.atomic import full_suffix
from medseg.core.segmentation import Segmentation

__all__ = ["write_label_map"]


def write_label_map(segmentation: Segmentation, path: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    """Write the label map (smallest unsigned dtype) and its ``.labels.json`` table, atomically.

    Parameters
    ----------
    segmentation : Segmentation
    path : str or Path
        ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha``; the format follows the suffix.
    overwrite : bool
        Replace existing files (default: refuse, see :mod:`medseg.io.output_policy`).

    Returns
    -------
    dict
        ``{"label_map": path, "labels": sidecar path}``.

    Raises
    ------
    FileFormatError
        Unsupported suffix.
    """
    p = Path(path)
    if full_suffix(p) not in IMAGE_SUFFIXES or full_suffix(p) in (".nhdr", ".mhd"):
        raise FileFormatError(p, f"cannot write a label map as {full_suffix(p)!r}",
                              "use .nii.gz, .nii, .nrrd or .mha")
    write_segmentation(segmentation, p, overwrite=overwrite)
    return {"label_map": p, "labels": sidecar_path(p)}
