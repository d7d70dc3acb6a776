"""DICOM SEG and RTSTRUCT: validated with dciodvfy, read back onto the same voxels."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medseg.core.errors import DicomError, GeometryError, InputError
from medseg.export import rasterize_rtstruct, read_dicom_seg, write_dicom_seg, write_rtstruct
from medseg.export._source import load_source
from medseg.core.labels import LabelTable
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume


def test_seg_real_ct_valid_and_exact(real_ct, real_ct_seg, tmp_path, dciodvfy_errors, dice):
    path = write_dicom_seg(real_ct_seg, tmp_path / "seg.dcm", source=real_ct, algorithm="threshold")
    assert dciodvfy_errors(path) == []
    back = read_dicom_seg(path, source=real_ct, segmentation=real_ct_seg)
    for index in (1, 2, 3):
        assert dice(back == index, real_ct_seg.array == index) == 1.0
    assert np.array_equal(back, real_ct_seg.array)
    ds = pydicom.dcmread(path)
    src = load_source(real_ct, real_ct_seg)
    assert ds.StudyInstanceUID == src.study_uid
    assert ds.FrameOfReferenceUID == src.frame_of_reference_uid
    refs = {str(i.ReferencedSOPInstanceUID) for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == set(src.sop_instance_uids)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.series_uid
    names = [s.SegmentLabel for s in ds.SegmentSequence]
    assert names == ["body", "bone", "lesion"]
    lesion = ds.SegmentSequence[2].SegmentedPropertyTypeCodeSequence[0]
    assert (lesion.CodeValue, lesion.CodingSchemeDesignator) == ("108369006", "SCT")


def test_rtstruct_real_ct_valid_and_dice(real_ct, real_ct_seg, tmp_path, dciodvfy_errors, dice):
    path = write_rtstruct(real_ct_seg, tmp_path / "rt.dcm", source=real_ct, algorithm="threshold")
    assert dciodvfy_errors(path) == []
    masks = rasterize_rtstruct(path, real_ct)
    assert sorted(masks) == ["body", "bone", "lesion"]
    for label in real_ct_seg.labels:
        d = dice(masks[label.name], real_ct_seg.array == label.index)
        assert d >= 0.95, (label.name, d)
    ds = pydicom.dcmread(path)
    src = load_source(real_ct, real_ct_seg)
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == src.frame_of_reference_uid
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert [str(i.ReferencedSOPInstanceUID) for i in series.ContourImageSequence] == src.sop_instance_uids
    # every contour references the slice it lies on
    z_of = {uid: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
            for uid, f in zip(src.sop_instance_uids, real_ct.meta["files"])}
    for c in ds.ROIContourSequence[2].ContourSequence:
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        assert np.allclose(pts[:, 2], z_of[str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)], atol=1e-3)


@pytest.mark.parametrize("grid", ["axial", "flipped", "oblique"])
def test_seg_and_rtstruct_roundtrip_on_written_series(grid, phantom, tmp_path, dice):
    from medseg.io import read_volume
    from medseg.io.dicom_write import write_dicom_series
    from medseg.samples.phantom import make_phantom

    shape = (12, 40, 44)
    sp = np.array([4.0, 3.0, 2.5])
    if grid == "axial":
        direction = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)
    elif grid == "flipped":  # x runs to patient Right, z downwards: negative determinant pieces
        direction = np.array([[0, 0, -1], [0, 1, 0], [-1, 0, 0]], float)
    else:
        c, s = np.cos(0.3), np.sin(0.3)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])
        direction = rot @ np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)
    affine = np.eye(4)
    affine[:3, :3] = direction * sp
    affine[:3, 3] = -(affine[:3, :3] @ (np.array(shape) - 1) / 2)
    image, seg = make_phantom(shape=shape, affine=affine, seed=3)
    write_dicom_series(image, tmp_path / "dicom", seed=grid)
    vol = read_volume(tmp_path / "dicom")
    assert np.allclose(vol.affine, affine, atol=1e-3)
    seg = Segmentation(Volume(seg.array, vol.affine), seg.labels)
    p = write_dicom_seg(seg, tmp_path / "seg.dcm", source=vol)
    assert np.array_equal(read_dicom_seg(p, source=vol, segmentation=seg), seg.array)
    r = write_rtstruct(seg, tmp_path / "rt.dcm", source=vol)
    masks = rasterize_rtstruct(r, vol)
    for label in seg.labels:
        if (seg.array == label.index).sum() > 50:  # tiny structures are all edge
            assert dice(masks[label.name], seg.array == label.index) >= 0.95, label.name
    # contours lie in patient space where the voxels are: every vertex is within half a voxel
    # (in plane) of a liver voxel centre, on the slice's plane
    from scipy.spatial import cKDTree

    ds = pydicom.dcmread(r)
    liver = [c for rc in ds.ROIContourSequence if rc.ReferencedROINumber == 1 for c in rc.ContourSequence]
    pts = np.concatenate([np.asarray(c.ContourData, float).reshape(-1, 3) for c in liver])
    vox = np.argwhere(seg.array == 1) @ vol.affine[:3, :3].T + vol.affine[:3, 3]
    dist, _ = cKDTree(vox).query(pts)
    assert dist.max() <= 0.5 * np.hypot(sp[1], sp[2]) + 1e-3


def test_labelmap_seg_type_roundtrip(real_ct, real_ct_seg, tmp_path):
    path = write_dicom_seg(real_ct_seg, tmp_path / "seg.dcm", source=real_ct, segmentation_type="labelmap")
    assert np.array_equal(read_dicom_seg(path, source=real_ct, segmentation=real_ct_seg), real_ct_seg.array)
    assert np.array_equal(read_dicom_seg(path, source=real_ct), real_ct_seg.array)  # grid from the source
    with pytest.raises(InputError, match="needs segmentation="):
        read_dicom_seg(path, source=real_ct.meta["files"])


def test_uids_are_deterministic_and_content_bound(real_ct, real_ct_seg, tmp_path):
    a = pydicom.dcmread(write_dicom_seg(real_ct_seg, tmp_path / "a.dcm", source=real_ct), stop_before_pixels=True)
    b = pydicom.dcmread(write_dicom_seg(real_ct_seg, tmp_path / "b.dcm", source=real_ct), stop_before_pixels=True)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    other = real_ct_seg.array.copy()
    other[other == 3] = 0
    seg2 = Segmentation(real_ct_seg.label_map.with_array(other), real_ct_seg.labels)
    c = pydicom.dcmread(write_dicom_seg(seg2, tmp_path / "c.dcm", source=real_ct), stop_before_pixels=True)
    assert c.SOPInstanceUID != a.SOPInstanceUID


def test_unknown_label_index_is_exported_with_a_name(real_ct, real_ct_seg, tmp_path):
    seg = Segmentation(real_ct_seg.label_map, LabelTable.from_names({1: "body"}))
    ds = pydicom.dcmread(write_dicom_seg(seg, tmp_path / "s.dcm", source=real_ct), stop_before_pixels=True)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["body", "label_2", "label_3"]


def test_geometry_mismatch_is_refused(real_ct, real_ct_seg, tmp_path):
    shifted = real_ct_seg.affine.copy()
    shifted[:3, 3] += [1.0, 0, 0]
    seg = Segmentation(Volume(real_ct_seg.array, shifted), real_ct_seg.labels)
    with pytest.raises(GeometryError, match="does not match the source series grid"):
        write_dicom_seg(seg, tmp_path / "s.dcm", source=real_ct)
    with pytest.raises(GeometryError, match="does not match the source series grid"):
        write_rtstruct(seg, tmp_path / "r.dcm", source=real_ct)
    assert not list(tmp_path.iterdir())  # nothing written, not even a partial file


def test_source_errors(real_ct, real_ct_seg, tmp_path):
    nifti_like = Volume(real_ct.array, real_ct.affine, {"source": "x.nii.gz"})
    with pytest.raises(InputError, match="has no meta\\['files'\\]"):
        write_dicom_seg(real_ct_seg, tmp_path / "s.dcm", source=nifti_like)
    with pytest.raises(InputError, match="not a DICOM folder or file"):
        write_dicom_seg(real_ct_seg, tmp_path / "s.dcm", source=tmp_path / "image.nii.gz")
    with pytest.raises(InputError, match="file list is empty"):
        write_dicom_seg(real_ct_seg, tmp_path / "s.dcm", source=[])
    files = list(real_ct.meta["files"])
    with pytest.raises(GeometryError, match="were interpolated"):
        write_rtstruct(real_ct_seg, tmp_path / "r.dcm", source=files[:3] + [None] + files[4:])
    with pytest.raises(InputError, match="multi-frame"):
        write_rtstruct(real_ct_seg, tmp_path / "r.dcm", source=[files[0]] * len(files))
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all")
    with pytest.raises(DicomError, match="cannot read the source DICOM header"):
        write_rtstruct(real_ct_seg, tmp_path / "r.dcm", source=[str(bad)] + files[1:])
    swapped = [files[1], files[0]] + files[2:]
    with pytest.raises(GeometryError, match="missing or irregular slice"):
        write_rtstruct(real_ct_seg, tmp_path / "r.dcm", source=swapped)
    with pytest.raises(InputError, match="segmentation_type"):
        write_dicom_seg(real_ct_seg, tmp_path / "s.dcm", source=real_ct, segmentation_type="fractional")
    empty = Segmentation(real_ct_seg.label_map.with_array(np.zeros_like(real_ct_seg.array)), real_ct_seg.labels)
    with pytest.raises(InputError, match="label map is empty"):
        write_dicom_seg(empty, tmp_path / "s.dcm", source=real_ct)
    with pytest.raises(InputError, match="label map is empty"):
        write_rtstruct(empty, tmp_path / "r.dcm", source=real_ct)


def test_rasterize_refuses_contours_off_the_grid(real_ct, real_ct_seg, tmp_path):
    path = write_rtstruct(real_ct_seg, tmp_path / "rt.dcm", source=real_ct)
    shifted = real_ct.affine.copy()
    shifted[:3, 3] += [0, 0, 1.0]  # half a slice
    with pytest.raises(DicomError, match="off the slice planes"):
        rasterize_rtstruct(path, Volume(real_ct.array, shifted))
