"""Small inputs shared by the data-safety tests (issue 18)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture()
def small_files(tmp_path, phantom):
    """A 32x64x64 phantom CT and its label map written as NIfTI (with sidecar) in ``tmp_path/in``."""
    from medseg.io import write_segmentation, write_volume

    image, seg = phantom
    root = tmp_path / "in"
    img = write_volume(image, root / "ct.nii.gz")
    lab = write_segmentation(seg, root / "labels.nii.gz")
    return img, lab
