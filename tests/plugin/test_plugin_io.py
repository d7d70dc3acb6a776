"""Readers, writers and sample data through a real napari viewer."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.io import read_segmentation, read_volume, sidecar_path, write_segmentation, write_volume
from medseg.core.labels import LabelTable
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume

from medseg_napari import _layers as L
from medseg_napari._reader import get_reader, read_image_file
from medseg_napari._writer import write_dicom_seg_layer, write_labels

pytestmark = pytest.mark.gui


def test_get_reader_returns_none_for_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path / "missing.png")) is None
    assert get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.nii")]) is None
    assert get_reader(str(tmp_path / "a.nii.gz")) is read_image_file


def test_broken_file_gives_none_not_an_exception(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    reader = get_reader(str(bad))
    assert reader is not None
    assert reader(str(bad)) is None


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_open_image_files_with_geometry(make_napari_viewer, phantom, tmp_path, suffix):
    image, _ = phantom
    path = tmp_path / f"ct{suffix}"
    write_volume(image, path)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="medseg")
    assert len(layers) == 1 and L.is_layer_type(layers[0], "image")
    back = L.volume_from_layer(layers[0])
    assert np.array_equal(back.array, image.array)
    assert np.allclose(back.affine, image.affine, atol=1e-4)
    # HU image without Modality: CT recognised by its values, soft-tissue window
    assert tuple(layers[0].contrast_limits) == pytest.approx(L.window_limits("soft tissue"))


def test_open_label_file_and_write_back_roundtrip(make_napari_viewer, phantom, tmp_path):
    _, seg = phantom
    path = tmp_path / "seg.nii.gz"
    write_segmentation(seg, path)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="medseg")
    assert L.is_layer_type(layer, "labels")
    assert L.labels_from_layer(layer).names == seg.labels.names
    # edit and write back as NRRD through napari's save with the medseg writer
    layer.data[0, 0, 0] = 2
    out = tmp_path / "edited.nrrd"
    written = viewer.layers.save(str(out), selected=True, plugin="medseg")
    assert str(out) in written
    back = read_segmentation(out)
    assert np.allclose(back.affine, seg.affine, atol=1e-4)
    assert back.array[0, 0, 0] == 2
    assert np.array_equal(back.array[1:], seg.array[1:])
    assert back.labels.names == seg.labels.names
    assert sidecar_path(out).exists()


def test_write_labels_for_a_layer_drawn_on_an_oblique_image(make_napari_viewer, tmp_path):
    from medseg.core.geometry import make_affine

    c, s_ = np.cos(0.4), np.sin(0.4)
    affine = make_affine((2.0, 1.1, 0.9), (10.0, 5.0, -7.0), np.array([[0, -s_, c], [0, c, s_], [1, 0, 0]], float))
    vol = Volume(np.zeros((5, 6, 7), np.float32), affine)
    viewer = make_napari_viewer()
    data, kw, _ = L.image_layer_data(vol)
    img = viewer.add_image(data, **kw)
    lab = viewer.add_labels(np.zeros((5, 6, 7), np.uint8), affine=img.affine)  # drawn by the user
    lab.data[2, 3, 4] = 1
    data, meta, _ = lab.as_layer_data_tuple()
    paths = write_labels(str(tmp_path / "drawn.nii.gz"), data, meta)
    from medseg_napari._writer import portable_state, segmentation_from_state

    assert np.allclose(segmentation_from_state(data, portable_state(meta)).affine, affine, atol=1e-6)
    back = read_segmentation(paths[0])
    assert np.allclose(back.affine, affine, atol=1e-5)
    assert back.array[2, 3, 4] == 1 and back.labels.names == ["label_1"]


def test_dicom_seg_writer_needs_a_dicom_source(make_napari_viewer, phantom, tmp_path):
    _, seg = phantom
    viewer = make_napari_viewer()
    layer = L.add_layer_data(viewer, L.labels_layer_data(seg))
    data, meta, _ = layer.as_layer_data_tuple()
    from medseg.core.errors import InputError

    with pytest.raises(InputError, match="no DICOM source"):
        write_dicom_seg_layer(str(tmp_path / "seg.dcm"), data, meta)


def test_sample_data(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("medseg", "ct")
    kinds = [type(l).__name__.lower() for l in layers]
    assert kinds == ["image", "labels"]
    image, labels = layers
    assert image.data.shape == labels.data.shape == (40, 128, 128)
    assert "liver" in L.labels_from_layer(labels).names
    assert tuple(image.contrast_limits) == pytest.approx(L.window_limits("soft tissue"))
    assert np.allclose(L.volume_from_layer(image).affine, L.volume_from_layer(labels).affine)


@pytest.mark.real_data
def test_real_ct_dicom_click_lands_on_voxel_and_labels_roundtrip(make_napari_viewer, real_data, tmp_path):
    pytest.importorskip("medseg.io.dicom")
    folder = real_data / "ct_dicom_series"
    ref = read_volume(folder)
    viewer = make_napari_viewer()
    layers = viewer.open(str(folder), plugin="medseg")
    (layer,) = layers
    assert layer.data.shape == ref.shape == (20, 512, 512)
    assert np.allclose(L.volume_from_layer(layer).affine, ref.affine)
    # a click in napari world coordinates (through the viewer's mouse pipeline) lands on the voxel
    target = (7, 300, 123)
    world = L.index_to_world(ref.affine, target)
    viewer.dims.current_step = tuple(int(v) for v in layer.world_to_data(world))  # noqa: not geometry
    assert L.world_to_index(layer, world) == target
    lps = (L.LPS_FROM_WORLD @ [*world, 1])[:3]
    assert np.allclose(ref.world_to_index(lps[None])[0], target, atol=1e-6)
    # paint at the click, write the labels with the medseg writer, read back with medseg.io
    lab = L.add_layer_data(viewer, L.labels_layer_data(
        Segmentation(ref.with_array(np.zeros(ref.shape, np.uint8)), LabelTable.from_names(["lesion"]))))
    lab.data[target] = 1
    data, meta, _ = lab.as_layer_data_tuple()
    paths = write_labels(str(tmp_path / "real_labels.nii.gz"), data, meta)
    back = read_segmentation(paths[0])
    assert np.allclose(back.affine, ref.affine, atol=1e-4)
    assert np.array_equal(np.argwhere(back.array == 1), [target])
    assert back.labels.names == ["lesion"]


@pytest.mark.real_data
def test_folder_with_two_series_opens_the_default_and_offers_the_other(qtbot, make_napari_viewer, real_data, tmp_path):
    import shutil

    pytest.importorskip("medseg.io.dicom")
    from medseg.io.dicom import scan_dicom, select_series
    from medseg.samples import sample_dicom_dir

    from medseg_napari._series import SeriesWidget

    if not any(sample_dicom_dir().glob("*.dcm")):
        pytest.skip("sample DICOM series not generated")
    study = tmp_path / "study"
    shutil.copytree(real_data / "ct_dicom_series", study / "a")
    shutil.copytree(sample_dicom_dir(), study / "b")
    default = select_series(scan_dicom(study))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(study), plugin="medseg")
    md = layer.metadata[L.METADATA_KEY]
    assert len(md["series"]) == 2 and md["series_uid"] == default.series_uid
    assert layer.data.shape == tuple(default.shape)
    # the picker lists both, pre-selects the default and opens the other one
    w = SeriesWidget(viewer)
    w.folder_edit.setText(str(study))
    w.scan()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=60_000)
    assert w.list.count() == 2 and "[default]" in w.list.currentItem().text()
    other_row = 1 - w.list.currentRow()
    w.list.setCurrentRow(other_row)
    w.open_selected()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=60_000)
    assert w.runner.last_error is None, w.runner.last_error
    opened = viewer.layers[-1]
    assert opened.metadata[L.METADATA_KEY]["series_uid"] == w.series[other_row]["uid"] != default.series_uid
    assert opened.data.shape != layer.data.shape
