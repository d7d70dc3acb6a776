"""A NIfTI with a broken header fails with a FileFormatError naming the file (lead owns nifti.py)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.core.errors import FileFormatError
from medseg.core.geometry import make_affine
from medseg.io import read_volume, write_volume
from medseg.core.volume import Volume


@pytest.mark.parametrize("damage", ["truncated_header", "zero_dims"])
def test_broken_nifti_header(tmp_path, damage):
    path = tmp_path / "img.nii"
    write_volume(Volume(np.zeros((3, 4, 5), np.int16), make_affine((1.0, 1.0, 1.0))), path)
    data = bytearray(path.read_bytes())
    if damage == "truncated_header":
        data = data[:100]
    else:
        data[40:56] = bytes(16)  # dim[0..7] = 0
    path.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match=r"img\.nii: cannot read as NIfTI"):
        read_volume(path)
