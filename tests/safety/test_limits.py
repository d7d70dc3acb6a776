"""Resource limits before allocating, header-only `medseg info`, DICOM header sanity (issue 18)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medseg.cli import main
from medseg.core.errors import FileFormatError, ResourceLimitError
from medseg.io import read_header, read_volume
from medseg.io.dicom import scan_dicom
from medseg.io.limits import ENV_VAR, check_declared_size, max_volume_bytes, max_volume_bytes_limit


def _nifti_bomb(path: Path, shape, data: bytes = b"") -> Path:
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape(shape)
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_sform(np.eye(4), code=1)
    raw = hdr.binaryblock + b"\0" * 4 + data
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)
    return path


@pytest.mark.parametrize("name", ["bomb.nii", "bomb.nii.gz"])
def test_nifti_header_claiming_terabytes_is_refused_before_allocating(tmp_path, name):
    path = _nifti_bomb(tmp_path / name, (30000, 30000, 30000), b"\0" * 1000)
    with pytest.raises(ResourceLimitError, match=r"dim\[1..7\].*49.1 TiB.*memory limit"):
        read_volume(path)


def test_limit_comes_from_the_environment_and_the_api(tmp_path, monkeypatch):
    path = _nifti_bomb(tmp_path / "v.nii.gz", (64, 64, 64), b"\0" * (64 ** 3 * 2))
    monkeypatch.setenv(ENV_VAR, "256K")
    assert max_volume_bytes()[0] == 256 * 1024
    with pytest.raises(ResourceLimitError, match=f"{ENV_VAR}=256K"):
        read_volume(path)
    with max_volume_bytes_limit(10**6):
        assert read_volume(path).shape == (64, 64, 64)
    monkeypatch.delenv(ENV_VAR)
    limit, source = max_volume_bytes()
    assert limit > 0 and "available" in source
    with pytest.raises(ResourceLimitError, match="negative"):
        check_declared_size("x", (-1, 2), 2, fields="dim")


def test_info_reads_the_header_only(tmp_path, capsys):
    # 128^3 int16 declared, a few bytes stored: reading the voxels fails, the header is enough for info
    path = _nifti_bomb(tmp_path / "cut.nii.gz", (128, 128, 128), b"\1" * 100)
    with pytest.raises(FileFormatError):
        read_volume(path)
    assert main(["info", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape_zyx"] == [128, 128, 128] and info["dtype"] == "int16"
    vol = read_header(path)
    assert vol.shape == (128, 128, 128) and vol.array.strides == (0, 0, 0)


def _itk_bomb(tmp_path: Path, suffix: str) -> Path:
    import SimpleITK as sitk

    small = tmp_path / f"small{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16)), str(small), useCompression=False)
    text = small.read_bytes()
    if suffix == ".nrrd":
        text = text.replace(b"sizes: 4 4 4", b"sizes: 40000 40000 40000")
    else:
        text = text.replace(b"DimSize = 4 4 4", b"DimSize = 40000 40000 40000")
    bomb = tmp_path / f"bomb{suffix}"
    bomb.write_bytes(text)
    return bomb


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nrrd_and_mha_headers_are_checked_before_reading(tmp_path, suffix, capsys):
    bomb = _itk_bomb(tmp_path, suffix)
    with pytest.raises(ResourceLimitError, match=r"sizes/DimSize.*116.4 TiB"):
        read_volume(bomb)
    assert main(["convert", str(bomb), str(tmp_path / "o.nii.gz")]) == 1
    assert not (tmp_path / "o.nii.gz").exists()
    assert main(["info", "--json", str(bomb)]) == 0  # the header alone
    assert json.loads(capsys.readouterr().out)["shape_zyx"] == [40000, 40000, 40000]


def _ct_slice(real_data: Path) -> pydicom.Dataset:
    return pydicom.dcmread(sorted((real_data / "ct_dicom_series").iterdir())[0])


def test_dicom_rows_columns_are_checked_against_pixel_data_and_limit(tmp_path, real_data, caplog):
    ds = _ct_slice(real_data)
    ds.decompress()  # native pixel data (the real slices are JPEG 2000), 512 x 512 x 2 bytes
    ds.Rows = ds.Columns = 65535
    (tmp_path / "big").mkdir()
    ds.save_as(tmp_path / "big" / "a.dcm")
    with max_volume_bytes_limit(1 << 50):  # a limit that passes: the pixel-data length does not
        scan = scan_dicom(tmp_path / "big")
    assert not scan.series and "pixel data holds 524288" in scan.skipped[0].reason
    assert main(["convert", str(tmp_path / "big"), str(tmp_path / "o.nii.gz")]) == 1


def test_compressed_dicom_with_huge_rows_is_refused(tmp_path):
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    ds.Rows = ds.Columns = 65535
    (tmp_path / "j").mkdir()
    ds.save_as(tmp_path / "j" / "a.dcm")
    with max_volume_bytes_limit(1 << 30):
        assert main(["convert", str(tmp_path / "j"), str(tmp_path / "o.nii.gz")]) == 1
        scan = scan_dicom(tmp_path / "j")
    assert "16.0 GiB, above the memory limit of 1.0 GiB" in scan.skipped[0].reason


def test_fake_preamble_is_not_dicom(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(2000))
    (tmp_path / "y.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"not dicom at all " * 50)
    scan = scan_dicom(tmp_path)
    assert len(scan.skipped) == 2
    assert all(s.reason.startswith("not a DICOM file") for s in scan.skipped)


def test_single_2d_radiograph_without_geometry_loads_as_one_slice(tmp_path, real_data):
    from medseg.io.dicom import read_dicom

    ds = _ct_slice(real_data)
    ds.decompress()
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, key)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.ImagerPixelSpacing = [0.15, 0.2]
    ds.Modality = "CR"
    (tmp_path / "cr").mkdir()
    ds.save_as(tmp_path / "cr" / "a.dcm")
    vol = read_dicom(tmp_path / "cr")
    assert vol.shape == (1, 512, 512)
    np.testing.assert_allclose(vol.spacing[1:], (0.15, 0.2))
    warning = next(w for w in vol.meta["warnings"] if "without patient geometry" in w)
    assert "ImagerPixelSpacing" in warning and "origin (0, 0, 0)" in warning
    np.testing.assert_array_equal(vol.array[0], ds.pixel_array.astype(np.int64) * int(ds.RescaleSlope)
                                  + int(ds.RescaleIntercept))
    assert main(["convert", str(tmp_path / "cr"), str(tmp_path / "cr.nii.gz")]) == 0
