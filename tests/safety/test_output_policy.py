"""The output policy (issue 18): never write onto an input, never overwrite without --overwrite,
named errors for folder/file mix-ups. Each CLI case fails on the code before the policy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medseg.cli import main
from medseg.core.errors import OutputError, OutputExistsError
from medseg.io import read_segmentation, read_volume, sidecar_path, write_segmentation, write_volume
from medseg.io.atomic import atomic_path
from medseg.io.output_policy import check_output_dir, check_output_file, protect_inputs, same_path

from .conftest import digest


# -- the policy functions ----------------------------------------------------------------------
def test_same_path_across_dots_symlinks_and_hard_links(tmp_path):
    a = tmp_path / "a.nii.gz"
    a.write_bytes(b"x")
    (tmp_path / "link.nii.gz").symlink_to(a)
    os.link(a, tmp_path / "hard.nii.gz")
    assert same_path(a, tmp_path / "." / "a.nii.gz")
    assert same_path(a, tmp_path / "sub" / ".." / "a.nii.gz")
    assert same_path(a, tmp_path / "link.nii.gz")
    assert same_path(a, tmp_path / "hard.nii.gz")
    assert not same_path(a, tmp_path / "other.nii.gz")


def test_check_output_file_refuses_inputs_existing_and_folders(tmp_path):
    src = tmp_path / "in.nii.gz"
    src.write_bytes(b"x")
    os.link(src, tmp_path / "hard.nii.gz")
    with pytest.raises(OutputError, match="is the input"):
        check_output_file(tmp_path / "hard.nii.gz", inputs=[src], overwrite=True)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output_file(src)
    (tmp_path / "x.nii.gz").mkdir()
    with pytest.raises(OutputError, match="existing folder"):
        check_output_file(tmp_path / "x.nii.gz", overwrite=True)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_file(src / "out.nii.gz")
    dicom = tmp_path / "dicom"
    dicom.mkdir()
    with pytest.raises(OutputError, match="inside the input folder"):
        check_output_file(dicom / "labels.nii.gz", inputs=[dicom])
    assert check_output_file(tmp_path / "new.nii.gz", inputs=[src]) == tmp_path / "new.nii.gz"


def test_check_output_dir_refuses_a_folder_holding_an_input(tmp_path):
    src = tmp_path / "out" / "labels.nii.gz"
    src.parent.mkdir()
    src.write_bytes(b"x")
    with pytest.raises(OutputError, match="contains the input"):
        check_output_dir(tmp_path / "out", inputs=[src])
    with pytest.raises(OutputError, match="existing file"):
        check_output_dir(src)
    with pytest.raises(OutputExistsError, match="already holds labels.nii.gz"):
        check_output_dir(tmp_path / "out", will_write=["labels.nii.gz", "stats.csv"])


def test_atomic_path_refuses_protected_inputs_and_keeps_them(tmp_path):
    src = tmp_path / "in.json"
    src.write_text("keep")
    with protect_inputs([src]):
        with pytest.raises(OutputError, match="is the input"):
            with atomic_path(tmp_path / "." / "in.json") as tmp:
                tmp.write_text("lost")
    assert src.read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["in.json"]  # no temporary file left


# -- API ---------------------------------------------------------------------------------------
def test_write_volume_refuses_its_source_by_hard_link_and_existing(small_files, tmp_path):
    img, _ = small_files
    vol = read_volume(img)
    os.link(img, tmp_path / "alias.nii.gz")
    before = digest(img)
    with pytest.raises(OutputError, match="is the input"):
        write_volume(vol, tmp_path / "alias.nii.gz", overwrite=True)
    other = write_volume(vol, tmp_path / "copy.nii.gz")
    with pytest.raises(OutputExistsError):
        write_volume(vol, other)
    write_volume(vol, other, overwrite=True)
    assert digest(img) == before


def test_write_segmentation_checks_both_files_first(small_files, tmp_path):
    _, lab = small_files
    seg = read_segmentation(lab)
    out = tmp_path / "o" / "seg.nii.gz"
    out.parent.mkdir()
    sidecar_path(out).write_text("{}")  # a stale sidecar: nothing may be written
    with pytest.raises(OutputExistsError):
        write_segmentation(seg, out)
    assert not out.exists()


def test_export_refuses_an_output_folder_holding_its_input_and_previous_results(small_files, tmp_path):
    from medseg.export import export_segmentation

    _, lab = small_files
    seg = read_segmentation(lab)
    before = digest(lab)
    with pytest.raises(OutputError, match="contains the input"):
        export_segmentation(seg, lab.parent, formats="nifti,stats")
    assert digest(lab) == before
    out = tmp_path / "exp"
    export_segmentation(seg, out, formats="nifti,stats")
    with pytest.raises(OutputExistsError, match="already holds"):
        export_segmentation(seg, out, formats="stats")
    export_segmentation(seg, out, formats="stats", overwrite=True)


# -- CLI findings of the hostile-input probe ---------------------------------------------------
def _rc(argv) -> int:
    return main([str(a) for a in argv])


def test_segment_in_in_keeps_the_input(small_files, monkeypatch, caplog):
    img, _ = small_files
    before = digest(img)
    assert _rc(["segment", img, img]) == 1
    monkeypatch.chdir(img.parent)
    assert _rc(["segment", img.name, "./" + img.name]) == 1
    assert _rc(["segment", img.name, "--overwrite", "./" + img.name]) == 1  # --overwrite never covers inputs
    assert digest(img) == before
    assert "is the input" in caplog.text


def test_consensus_output_onto_a_rater_keeps_it(small_files, tmp_path, caplog):
    _, lab = small_files
    r2 = tmp_path / "r2.nii.gz"
    write_segmentation(read_segmentation(lab), r2)
    before = digest(lab), digest(sidecar_path(lab))
    assert _rc(["consensus", lab, r2, r2, "-o", lab, "--method", "majority"]) == 1
    assert _rc(["consensus", lab, r2, "-o", lab, "--method", "majority", "--overwrite"]) == 1
    assert (digest(lab), digest(sidecar_path(lab))) == before
    assert "is the input" in caplog.text


def test_convert_refuses_existing_output_unless_overwrite(small_files, tmp_path):
    img, _ = small_files
    out = tmp_path / "c.nrrd"
    out.write_bytes(b"previous")
    assert _rc(["convert", img, out]) == 1
    assert out.read_bytes() == b"previous"
    assert _rc(["convert", img, out, "--overwrite"]) == 0
    np.testing.assert_array_equal(read_volume(out).array, read_volume(img).array)


def test_output_that_is_a_folder_named_like_a_file(small_files, tmp_path, caplog):
    img, _ = small_files
    (tmp_path / "x.nii.gz").mkdir()
    assert _rc(["convert", img, tmp_path / "x.nii.gz", "--overwrite"]) == 1
    assert "is an existing folder" in caplog.text and "IsADirectoryError" not in caplog.text


def test_convert_into_a_dicom_folder_is_refused(tmp_path):
    from medseg.io.dicom_write import write_dicom_series
    from medseg.samples.phantom import default_phantom_affine, make_phantom

    image, _ = make_phantom(shape=(4, 16, 16), affine=default_phantom_affine((4, 16, 16), (3.0, 2.0, 2.0)), seed=1)
    folder = tmp_path / "dicom"
    write_dicom_series(image, folder)
    assert _rc(["convert", folder, folder / "vol.nii.gz"]) == 1
    assert not (folder / "vol.nii.gz").exists()
