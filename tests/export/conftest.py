"""Fixtures for export tests: the real CT series and a labelled segmentation on its grid."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from medseg.core.labels import MORPHOLOGY, Code, Label
from medseg.core.segmentation import Segmentation


@pytest.fixture(scope="session")
def real_ct(real_data):
    from medseg.io import read_volume

    return read_volume(real_data / "ct_dicom_series")


@pytest.fixture(scope="session")
def real_ct_seg(real_ct):
    """Body + bone (thresholds) plus a hollow 'lesion' label (tests contour holes)."""
    from medseg.batch.segmenters import threshold_segment

    seg = threshold_segment(real_ct)
    arr = seg.array.copy()
    kk, jj, ii = np.meshgrid(*(np.arange(s) for s in arr.shape), indexing="ij")
    r = np.sqrt(((kk - 10) * 2.0) ** 2 + ((jj - 260) * 0.977) ** 2 + ((ii - 300) * 0.977) ** 2)
    arr[(r < 14) & (r >= 5)] = 3  # a shell: slices through it are rings with holes
    labels = seg.labels.with_label(Label(3, "lesion", (60, 200, 230), Code("108369006", "SCT", "Neoplasm"), MORPHOLOGY))
    return Segmentation(seg.label_map.with_array(arr), labels)


@pytest.fixture
def dciodvfy_errors():
    return _dciodvfy_errors


@pytest.fixture
def dice():
    return _dice


def _dciodvfy_errors(path) -> list[str]:
    """Error lines dciodvfy reports for a DICOM file (skips when dicom3tools is absent)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        msg = "dciodvfy not installed (Debian: apt-get install -y dicom3tools)"
        if os.environ.get("MEDSEG_REQUIRE_REAL_DATA") == "1":  # CI: the validation must run
            pytest.fail(msg)
        pytest.skip(msg)
    out = subprocess.run([exe, str(path)], capture_output=True, text=True)
    text = out.stdout + out.stderr
    return [line for line in text.splitlines() if line.startswith("Error")]


def _dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)
