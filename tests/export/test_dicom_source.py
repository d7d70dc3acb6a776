"""The reader's DicomSource record: what it holds, how exports use it, and when it is dropped.

Every expectation is read from the DICOM files themselves with pydicom (never from medseg's
record), so a swapped slice order or an off-by-one in the positions breaks these tests.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pydicom
import pytest

from medseg.core.errors import GeometryError
from medseg.export import write_dicom_seg, write_rtstruct
from medseg.io.dicom import DicomSource, orthogonalize, read_dicom_source
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume


def _headers(files):
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def _uid(ds, key):
    """A UID of the data set, else of its file meta (the real CT is de-identified: blank SOP UIDs)."""
    return str(ds.get(key) or ds.file_meta.get("MediaStorage" + key))


def test_reader_volume_carries_the_files_positions_and_uids(real_data, real_ct):
    src = real_ct.dicom_source
    assert isinstance(src, DicomSource) and src.shape == real_ct.shape
    files = sorted((real_data / "ct_dicom_series").iterdir())
    by_uid = {_uid(ds, "SOPInstanceUID"): (str(f), ds) for f, ds in zip(files, _headers(files))}
    assert sorted(src.sop_instance_uids) == sorted(by_uid)
    first = next(iter(by_uid.values()))[1]
    assert src.frame_of_reference_uid == str(first.FrameOfReferenceUID)
    assert src.study_uid == str(first.StudyInstanceUID)
    for k, s in enumerate(src.slices):
        path, ds = by_uid[s.sop_instance_uid]
        assert s.file == path
        assert s.sop_class_uid == _uid(ds, "SOPClassUID")
        # the record keeps each file's own ImagePositionPatient ...
        assert np.allclose(s.position, np.asarray(ds.ImagePositionPatient, float), atol=1e-6)
        # ... and slice k of the array is the image at the reader's plane k
        assert np.allclose(real_ct.index_to_world(np.array([[k, 0, 0]]))[0], s.position, atol=1e-3)
    normal = np.cross(*np.reshape(np.asarray(first.ImageOrientationPatient, float), (2, 3)))
    heights = src.positions @ normal
    assert np.all(np.diff(heights) > 0)  # ordered along the slice normal, not by file name


def test_header_only_record_equals_the_reader_record(real_data, real_ct):
    assert read_dicom_source(real_data / "ct_dicom_series", series_uid="") == real_ct.dicom_source


def test_seg_frames_land_on_the_referenced_source_slices(real_ct, real_ct_seg, tmp_path):
    path = write_dicom_seg(real_ct_seg, tmp_path / "seg.dcm", source=real_ct)
    seg = pydicom.dcmread(path)
    src = real_ct.dicom_source
    files_by_uid = {_uid(ds, "SOPInstanceUID"): ds for ds in _headers(src.files)}
    refs = {str(i.ReferencedSOPInstanceUID) for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == set(files_by_uid)
    frames = seg.pixel_array.reshape(-1, *real_ct.shape[1:])
    numbers = {int(s.SegmentNumber): int(str(s.TrackingID).split()[-1]) for s in seg.SegmentSequence}
    inv = np.linalg.inv(real_ct.affine)
    for n, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ref = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        frame_pos = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        # the frame sits where its referenced file says, and that is the reader's plane k
        assert np.allclose(frame_pos, np.asarray(files_by_uid[ref].ImagePositionPatient, float), atol=1e-3)
        k = inv[:3, :3] @ frame_pos + inv[:3, 3]
        assert np.allclose(k[1:], 0, atol=1e-3) and abs(k[0] - round(k[0])) < 1e-3
        k = int(round(k[0]))
        assert src.sop_instance_uids[k] == ref
        label = numbers[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
        assert np.array_equal(frames[n].astype(bool), real_ct_seg.array[k] == label)


def test_rtstruct_contours_land_on_the_referenced_source_slices(real_ct, real_ct_seg, tmp_path):
    path = write_rtstruct(real_ct_seg, tmp_path / "rt.dcm", source=real_ct)
    ds = pydicom.dcmread(path)
    src = real_ct.dicom_source
    files_by_uid = {_uid(h, "SOPInstanceUID"): h for h in _headers(src.files)}
    series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert [str(i.ReferencedSOPInstanceUID) for i in series.ContourImageSequence] == src.sop_instance_uids
    assert set(src.sop_instance_uids) == set(files_by_uid)
    inv = np.linalg.inv(real_ct.affine)
    checked = 0
    for rc in ds.ROIContourSequence:
        for c in rc.ContourSequence:
            ref = str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)
            pts = np.asarray(c.ContourData, float).reshape(-1, 3)
            h = files_by_uid[ref]
            normal = np.cross(*np.reshape(np.asarray(h.ImageOrientationPatient, float), (2, 3)))
            # on the plane of the file it references ...
            assert np.allclose(pts @ normal, np.asarray(h.ImagePositionPatient, float) @ normal, atol=1e-3)
            # ... which is the reader's slice k for that instance
            kji = pts @ inv[:3, :3].T + inv[:3, 3]
            assert np.allclose(kji[:, 0], src.sop_instance_uids.index(ref), atol=1e-3)
            checked += 1
    assert checked > 20


def test_export_refuses_a_grid_the_record_does_not_describe(real_ct, real_ct_seg, tmp_path):
    a = real_ct_seg.affine.copy()
    a[:3, 3] += a[:3, 0]  # off by one slice
    off_by_one = Segmentation(Volume(real_ct_seg.array, a), real_ct_seg.labels)
    for write, name in ((write_dicom_seg, "s.dcm"), (write_rtstruct, "r.dcm")):
        with pytest.raises(GeometryError, match="slice 0 .* lies at"):
            write(off_by_one, tmp_path / name, source=real_ct)
    cropped = Segmentation(Volume(real_ct_seg.array[1:], real_ct_seg.affine), real_ct_seg.labels)
    with pytest.raises(GeometryError, match=r"does not match the source series grid \(20, 512, 512\)"):
        write_rtstruct(cropped, tmp_path / "r.dcm", source=real_ct)
    assert not list(tmp_path.iterdir())


def test_record_check_catches_swapped_and_shifted_slices(real_ct):
    src = real_ct.dicom_source
    src.check_grid(real_ct.shape, real_ct.affine)
    slices = list(src.slices)
    slices[3], slices[4] = slices[4], slices[3]
    with pytest.raises(GeometryError, match="slice 3 .* out of order"):
        dataclasses.replace(src, slices=tuple(slices)).check_grid(real_ct.shape, real_ct.affine)
    shifted = list(src.slices)
    s = shifted[7]
    shifted[7] = dataclasses.replace(s, position=(s.position[0], s.position[1], s.position[2] + 0.5))
    with pytest.raises(GeometryError, match="slice 7"):
        dataclasses.replace(src, slices=tuple(shifted)).check_grid(real_ct.shape, real_ct.affine)
    with pytest.raises(GeometryError, match="in-plane axes"):
        src.check_grid(real_ct.shape, real_ct.affine @ np.diag([1.0, 1.0, -1.0, 1.0]))


def test_new_grids_drop_the_record(real_ct, tmp_path):
    same = real_ct.with_array(real_ct.array > 0)
    assert same.dicom_source is real_ct.dicom_source  # same grid: kept
    a = real_ct.affine.copy()
    a[:3, 3] += 2 * a[:3, 0]
    cropped = Volume(real_ct.array[2:], a, real_ct.meta)  # a crop keeps the provenance meta ...
    assert cropped.dicom_source is None  # ... but not the record
    with pytest.raises(GeometryError):  # nor can a stale record be attached to it
        Volume(real_ct.array[2:], a, real_ct.meta, real_ct.dicom_source)
    with pytest.raises(GeometryError):
        dataclasses.replace(real_ct, affine=real_ct.affine @ np.diag([2.0, 1.0, 1.0, 1.0]))
    half = real_ct.affine @ np.diag([2.0, 1.0, 1.0, 1.0])
    resampled = Volume(real_ct.array[::2], half, real_ct.meta)
    assert resampled.dicom_source is None
    # an export from the cropped volume re-reads its (stale) meta['files'] headers and refuses
    seg = Segmentation(Volume(np.ones(cropped.shape, np.uint8), cropped.affine), real_ct_labels())
    with pytest.raises(GeometryError, match="does not match the source series grid"):
        write_rtstruct(seg, tmp_path / "r.dcm", source=cropped)


def real_ct_labels():
    from medseg.core.labels import LabelTable

    return LabelTable.from_names({1: "body"})


def test_orthogonalize_drops_the_record_of_a_tilted_series(tmp_path):
    from medseg.core.geometry import make_affine
    from medseg.io import read_volume
    from medseg.io.dicom_write import write_dicom_series

    affine = make_affine((2.0, 0.8, 0.7), (-10.0, 20.0, 5.0))
    affine[:3, 0] += (0.0, 0.35, 0.0)  # slice centres step posteriorly: a ~10 degree gantry tilt
    arr = (np.arange(6 * 12 * 10).reshape(6, 12, 10) % 300 - 100).astype(np.int16)
    write_dicom_series(Volume(arr, affine), tmp_path / "tilt", seed=3)
    tilted = read_volume(tmp_path / "tilt")
    assert tilted.dicom_source is not None  # the sheared grid is the acquired one
    straight = orthogonalize(tilted)
    assert straight.dicom_source is None
    seg = Segmentation(Volume((straight.array > 0).astype(np.uint8), straight.affine), real_ct_labels())
    with pytest.raises(GeometryError):
        write_dicom_seg(seg, tmp_path / "s.dcm", source=straight)


def test_folder_source_reads_headers_not_pixels(real_data, real_ct, real_ct_seg, tmp_path):
    """A folder source is scanned for headers only: corrupt pixel data does not matter."""
    folder = tmp_path / "ct"
    shutil.copytree(real_data / "ct_dicom_series", folder)
    for f in folder.iterdir():  # wipe the JPEG 2000 main header inside the (intact) fragment
        data = bytearray(f.read_bytes())
        i = data.find(b"\xff\x4f\xff\x51")
        assert i > 0
        data[i:i + 256] = bytes(256)
        f.write_bytes(bytes(data))
    with pytest.raises(Exception):
        from medseg.io import read_volume

        read_volume(folder)
    out = write_rtstruct(real_ct_seg, tmp_path / "rt.dcm", source=folder)
    refs = [str(i.ReferencedSOPInstanceUID) for i in pydicom.dcmread(out).ReferencedFrameOfReferenceSequence[0]
            .RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].ContourImageSequence]
    assert refs == real_ct.dicom_source.sop_instance_uids


def test_a_source_file_replaced_after_reading_is_refused(real_data, tmp_path):
    """SEG hands highdicom the files' own headers: each must still hold the recorded instance."""
    from medseg.core.errors import DicomError
    from medseg.io import read_volume

    folder = tmp_path / "ct"
    shutil.copytree(real_data / "ct_dicom_series", folder)
    volume = read_volume(folder)
    seg = Segmentation(Volume((volume.array > 0).astype(np.uint8), volume.affine), real_ct_labels())
    files = volume.dicom_source.files
    shutil.copyfile(files[6], files[5])  # slice 5's file now holds slice 6's instance
    with pytest.raises(DicomError, match="now holds SOP instance"):
        write_dicom_seg(seg, tmp_path / "s.dcm", source=volume)
    assert not (tmp_path / "s.dcm").exists()


def test_interpolated_slices_have_no_source_and_are_refused(tmp_path):
    from medseg.core.geometry import make_affine
    from medseg.io import read_volume
    from medseg.io.dicom_write import write_dicom_series

    arr = (np.arange(12 * 16 * 14).reshape(12, 16, 14) % 500 - 200).astype(np.int16)
    files = write_dicom_series(Volume(arr, make_affine((2.5, 0.9, 0.8), (3.0, -7.0, 11.0))), tmp_path / "gap", seed=5)
    gone = files[5]
    gone.unlink()  # a missing slice: the reader interpolates it
    volume = read_volume(tmp_path / "gap")
    src = volume.dicom_source
    assert src.interpolated == [5] and src.slices[5] is None
    assert str(gone) not in src.files and len(src.files) == 12
    headers = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files if f != gone}
    for k, s in enumerate(src.slices):
        if s is not None:
            assert np.allclose(s.position, pydicom.dcmread(headers[s.sop_instance_uid]).ImagePositionPatient)
            assert np.allclose(volume.index_to_world(np.array([[k, 0, 0]]))[0], s.position, atol=1e-3)
    seg = Segmentation(Volume((volume.array > 0).astype(np.uint8), volume.affine), real_ct_labels())
    with pytest.raises(GeometryError, match="were interpolated"):
        write_rtstruct(seg, tmp_path / "r.dcm", source=volume)
