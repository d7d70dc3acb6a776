"""Generated study folders for batch tests (phantom CT series written as real DICOM files)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest


def make_study(root: Path, *, n_series: int = 2, shape=(12, 40, 40), nifti: bool = True) -> Path:
    from medseg.io import write_volume
    from medseg.io.dicom_write import write_dicom_series
    from medseg.samples.phantom import default_phantom_affine, make_phantom

    for s in range(n_series):
        image, _ = make_phantom(shape=shape, affine=default_phantom_affine(shape, (10.0, 8.0, 8.0)), seed=s)
        write_dicom_series(image, root / f"patient{s}" / "study" / "ct", seed=f"batch{s}",
                           series_description=f"CT abdomen {s}", patient_id=f"P{s}")
    if nifti:
        image, _ = make_phantom(shape=shape, affine=default_phantom_affine(shape, (10.0, 8.0, 8.0)), seed=9)
        write_volume(image, root / "nifti" / "extra_ct.nii.gz")
    return root


@pytest.fixture(scope="session")
def base_study(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("study_base") / "study")


@pytest.fixture
def study(base_study, tmp_path) -> Path:
    dst = tmp_path / "study"
    shutil.copytree(base_study, dst)
    return dst


@pytest.fixture
def tree_hashes():
    def hashes(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}
    return hashes
