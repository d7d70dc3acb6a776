"""``medseg info``: DICOM folders, images and label maps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dicom_helpers import ramp_volume, write_series
from medseg.cli import main
from medseg.io import write_segmentation, write_volume
from medseg.core.labels import LabelTable
from medseg.core.segmentation import Segmentation


def test_info_dicom_folder_lists_series_and_skipped(tmp_path, capsys):
    vol = ramp_volume(shape=(5, 8, 8))
    write_series(vol, tmp_path / "study" / "a", seed=1, series_description="axial ramp")
    (tmp_path / "study" / "readme.txt").write_text("hello")
    assert main(["info", str(tmp_path / "study")]) == 0
    out = capsys.readouterr().out
    assert "CT 'axial ramp'" in out and "5 images in 5 files" in out and "[default]" in out
    assert "grid (Z, Y, X) (5, 8, 8)" in out and "orientation SPL" in out
    assert "readme.txt: not a DICOM file" in out
    assert main(["info", "--json", str(tmp_path / "study")]) == 0
    info = json.loads(capsys.readouterr().out)
    (s,) = info["series"]
    assert s["n_images"] == 5 and s["spacing_zyx_mm"] == [2.0, 0.8, 0.7] and s["default"]
    assert info["skipped"][0]["reason"].startswith("not a DICOM file")


def test_info_unknown_series_is_an_error(tmp_path, caplog):
    write_series(ramp_volume(shape=(2, 8, 8)), tmp_path / "s", seed=1)
    assert main(["info", "--series", "1.2.3", str(tmp_path / "s")]) == 1
    assert "series '1.2.3' not found" in caplog.text


def test_info_image_and_label_map(tmp_path, capsys):
    vol = ramp_volume(shape=(4, 6, 5), spacing=(2.0, 1.0, 0.5))
    write_volume(vol, tmp_path / "img.nii.gz")
    assert main(["info", "--json", str(tmp_path / "img.nii.gz")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "image" and info["shape_zyx"] == [4, 6, 5] and info["orientation"] == "SPL"
    assert "value_range" not in info  # headers only by default (issue 18); --values reads the voxels
    assert main(["info", "--json", "--values", str(tmp_path / "img.nii.gz")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["value_range"] == [float(vol.array.min()), float(vol.array.max())]
    labels = np.zeros(vol.shape, np.uint8)
    labels[0, :2, :] = 1  # 10 voxels of 1 mm^3
    labels[1:, 3:, :] = 2  # 45 voxels
    seg = Segmentation(vol.with_array(labels), LabelTable.from_names(["liver", "spleen", "tumour"]))
    write_segmentation(seg, tmp_path / "seg.nii.gz")
    assert main(["info", "--json", str(tmp_path / "seg.nii.gz")]) == 0  # sidecar → label map
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["labels"]}
    assert rows["liver"]["voxels"] == 10 and rows["liver"]["volume_ml"] == pytest.approx(0.01)
    assert rows["spleen"]["voxels"] == 45 and rows["tumour"]["voxels"] == 0
    assert main(["info", str(tmp_path / "seg.nii.gz")]) == 0
    text = capsys.readouterr().out
    assert "liver" in text and "volume mL" in text


def test_info_missing_path(tmp_path, caplog):
    assert main(["info", str(tmp_path / "nope")]) == 1
    assert "no such file" in caplog.text


def test_info_single_series_by_uid(tmp_path, capsys):
    import pydicom

    files = write_series(ramp_volume(shape=(3, 8, 8)), tmp_path / "s", seed=4)
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    assert main(["info", "--json", "--series", uid, str(files[0])]) == 0  # a single .dcm file works too
    info = json.loads(capsys.readouterr().out)
    assert [s["series_uid"] for s in info["series"]] == [uid] and info["series"][0]["n_images"] == 1
