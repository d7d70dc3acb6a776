"""Paths of the bundled sample study (works from a checkout and from an installed wheel)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["sample_dir", "sample_ct", "sample_labels", "sample_dicom_dir"]


def sample_dir() -> Path:
    """Folder holding the sample study (see ``sample_data/generate.py``)."""
    return Path(str(files("medseg.sample_data")))


def sample_ct() -> Path:
    """The sample CT as NIfTI (HU)."""
    return sample_dir() / "ct_phantom.nii.gz"


def sample_labels() -> Path:
    """The sample CT's reference label map (NIfTI, with a ``.labels.json`` sidecar)."""
    return sample_dir() / "ct_phantom_labels.nii.gz"


def sample_dicom_dir() -> Path:
    """The sample CT as a DICOM series folder."""
    return sample_dir() / "dicom"
