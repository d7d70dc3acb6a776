"""Existing DICOM SEG / RTSTRUCT open on their source series' grid, and export back to it."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.export.reopen import dicom_object_kind, read_dicom_labels


def test_seg_opens_on_its_series_with_names_and_codes(real_data, tmp_path):
    from medseg.cli import main
    from medseg.io import read_segmentation

    path = real_data / "ct_seg_dcmqi" / "liver_SEG.dcm"
    assert dicom_object_kind(path) == "SEG"
    seg = read_dicom_labels(path)
    assert seg.array.shape == (3, 512, 512) and seg.labels.names == ["Liver"]
    assert seg.labels[seg.labels.indices[0]].code.meaning == "Liver"
    assert (seg.array > 0).sum() > 50_000
    # medseg convert takes it as input
    assert main(["convert", str(path), str(tmp_path / "liver.nii.gz")]) == 0
    back = read_segmentation(tmp_path / "liver.nii.gz")
    assert np.array_equal(back.array > 0, seg.array > 0) and back.labels.names == ["Liver"]


def test_rtstruct_reexport_references_the_same_series(real_data, tmp_path):
    import pydicom

    from medseg.export import rasterize_rtstruct, write_rtstruct

    path = real_data / "nsclc_lung1_001" / "dicom" / "2.dcm"
    assert dicom_object_kind(path) == "RTSTRUCT"
    seg = read_dicom_labels(path)
    gtv = seg.labels.names.index("GTV-1") + 1
    assert seg.array.shape == (134, 512, 512) and (seg.array == gtv).sum() > 10_000
    out = write_rtstruct(seg, tmp_path / "rt.dcm", source=seg.label_map.meta["files"])
    a, b = pydicom.dcmread(path), pydicom.dcmread(out)
    ref = lambda ds: ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
        .RTReferencedSeriesSequence[0].SeriesInstanceUID  # noqa: E731
    assert ref(a) == ref(b)
    back = rasterize_rtstruct(out, seg)
    assert np.array_equal(back["GTV-1"], seg.array == gtv)
