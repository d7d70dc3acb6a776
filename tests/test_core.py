"""Core types: labels, segmentation, config loading, phantom, NIfTI/NRRD bad input."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import pytest

from medseg.core.config import from_mapping, load_yaml
from medseg.core.errors import ConfigError, FileFormatError, GeometryError, InputError, OutputError
from medseg.io import read_segmentation, read_volume, sidecar_path, write_segmentation, write_volume
from medseg.core.labels import Code, Label, LabelTable
from medseg.samples.phantom import PHANTOM_LABELS, make_phantom
from medseg.core.segmentation import Segmentation, smallest_label_dtype
from medseg.core.volume import Volume


def test_label_table_json_roundtrip(tmp_path):
    table = PHANTOM_LABELS
    table.write(tmp_path / "t.json")
    back = LabelTable.read(tmp_path / "t.json")
    assert back == table
    assert back.by_name("liver").code == Code("10200004", "SCT", "Liver")
    assert LabelTable.from_dict({"1": "a", "3": "b"}).indices == [1, 3]


def test_label_table_errors(tmp_path):
    with pytest.raises(InputError, match="unique"):
        LabelTable((Label(1, "a"), Label(1, "b")))
    with pytest.raises(InputError, match="names must be unique"):
        LabelTable((Label(1, "a"), Label(2, "a")))
    with pytest.raises(InputError, match="0 is background"):
        Label(0, "bg")
    with pytest.raises(InputError, match="colour"):
        Label(1, "a", (300, 0, 0))
    with pytest.raises(InputError, match="non-empty name"):
        Label(1, "")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FileFormatError, match="not a valid label table"):
        LabelTable.read(tmp_path / "bad.json")


def test_segmentation_dtype_and_volumes():
    vol = Volume.from_spacing(np.zeros((2, 3, 4), np.int64), (2.0, 1.0, 1.0))
    arr = vol.array.copy()
    arr[0, 0, :2] = 1
    seg = Segmentation(vol.with_array(arr), LabelTable.from_names(["a"]))
    assert seg.array.dtype == np.uint8
    assert seg.volumes_ml() == {1: pytest.approx(2 * 2.0 / 1000)}
    assert smallest_label_dtype(300) == np.uint16
    with pytest.raises(InputError, match="integers"):
        Segmentation(vol.with_array(arr + 0.5), LabelTable.from_names(["a"]))
    with pytest.raises(InputError, match="negative"):
        Segmentation(vol.with_array(arr - 2), LabelTable.from_names(["a"]))


def test_with_array_checks_shape():
    vol = Volume.from_spacing(np.zeros((2, 3, 4)), (1, 1, 1))
    with pytest.raises(GeometryError, match="must match"):
        vol.with_array(np.zeros((2, 3, 5)))
    with pytest.raises(InputError, match=r"\(Z, Y, X\)"):
        Volume(np.zeros((3, 4)), np.eye(4))
    other = Volume.from_spacing(np.zeros((2, 3, 4)), (1, 1, 2))
    with pytest.raises(GeometryError, match="resample"):
        vol.require_same_grid(other)


def test_segmentation_file_roundtrip_smallest_dtype(tmp_path, phantom):
    _, seg = phantom
    write_segmentation(seg, tmp_path / "seg.nrrd")
    assert sidecar_path(tmp_path / "seg.nrrd").name == "seg.labels.json"
    back = read_segmentation(tmp_path / "seg.nrrd")
    assert back.array.dtype == np.uint8
    assert np.array_equal(back.array, seg.array)
    assert back.labels == seg.labels
    assert np.allclose(back.affine, seg.affine, atol=1e-5)


def test_phantom_is_deterministic_and_realistic(phantom):
    image, seg = phantom
    image2, seg2 = make_phantom(shape=image.shape, affine=image.affine, seed=0)
    assert np.array_equal(image.array, image2.array) and np.array_equal(seg.array, seg2.array)
    hu = {l.name: float(np.median(image.array[seg.array == l.index])) for l in seg.labels}
    assert 40 < hu["liver"] < 80 and hu["liver_tumor"] < hu["liver"] - 20 and hu["aorta"] > 120
    assert set(seg.present_indices()) == {1, 2, 3, 4, 5, 6}
    # tumour inside the liver: every tumour voxel touches liver or tumour only
    from scipy.ndimage import binary_dilation

    ring = binary_dilation(seg.array == 6) & (seg.array != 6)
    assert np.mean(seg.array[ring] == 1) > 0.9


def test_phantom_same_anatomy_on_flipped_grid():
    """The phantom is defined in LPS mm: a flipped grid sees the same anatomy, flipped."""
    from medseg.samples.phantom import default_phantom_affine

    shape = (20, 48, 48)
    a = default_phantom_affine(shape, (8.0, 7.0, 7.0))
    flip = a.copy()
    flip[:3, 2] *= -1  # x axis reversed
    flip[:3, 3] = a[:3, :3] @ np.array([0, 0, shape[2] - 1]) + a[:3, 3]
    _, s1 = make_phantom(shape=shape, affine=a, seed=3, noise_hu=0)
    _, s2 = make_phantom(shape=shape, affine=flip, seed=3, noise_hu=0)
    assert np.array_equal(s1.array, s2.array[:, :, ::-1])


def test_nifti_broken_header(tmp_path, phantom):
    image, _ = phantom
    good = tmp_path / "good.nii"
    write_volume(image, good)
    raw = bytearray(good.read_bytes())
    bad_dim = bytearray(raw)
    bad_dim[42:44] = (-5).to_bytes(2, "little", signed=True)  # dim[1] < 0
    (tmp_path / "broken.nii").write_bytes(bytes(bad_dim))
    with pytest.raises(FileFormatError, match="broken.nii: cannot read as NIfTI"):
        read_volume(tmp_path / "broken.nii")
    # NaN in the sform and no qform: there is no geometry to trust, so refuse
    import nibabel as nib

    img = nib.load(good)
    img.header.set_qform(None, code=0)
    srow = img.header.get_sform()
    srow[0, 0] = np.nan
    img.header["srow_x"] = srow[0]
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), None, img.header), tmp_path / "nan.nii")
    with pytest.raises(FileFormatError, match="nan.nii: cannot read as NIfTI.*NaN"):
        read_volume(tmp_path / "nan.nii")
    truncated = tmp_path / "trunc.nii.gz"
    truncated.write_bytes(gzip.compress(bytes(good.read_bytes()))[:2000])
    with pytest.raises(FileFormatError, match="trunc.nii.gz"):
        read_volume(truncated).array.sum()


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(FileFormatError, match="unknown image format"):
        read_volume(tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_volume(tmp_path / "nope.nii.gz")


def test_write_refuses_source_overwrite(tmp_path, phantom):
    image, _ = phantom
    p = write_volume(image, tmp_path / "a.nii.gz")
    loaded = read_volume(p)
    before = p.read_bytes()
    # the output policy's named error (medseg.io.output_policy); overwrite=True never covers an input
    with pytest.raises(OutputError, match="is the input"):
        write_volume(loaded, p, overwrite=True)
    assert p.read_bytes() == before


@dataclass(frozen=True)
class _Inner:
    size: int
    mode: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class _Outer:
    name: str
    inner: _Inner
    values: tuple[float, ...] = ()
    extra: Optional[_Inner] = None
    tags: dict = field(default_factory=dict)


def test_config_strict_loading(tmp_path):
    cfg = from_mapping(_Outer, {"name": "x", "inner": {"size": 3}, "values": [1, 2.5]}, source="c.yaml")
    assert cfg.inner.size == 3 and cfg.values == (1.0, 2.5)
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'inner.sise'"):
        from_mapping(_Outer, {"name": "x", "inner": {"sise": 3}}, source="c.yaml")
    with pytest.raises(ConfigError, match="missing required key 'inner'"):
        from_mapping(_Outer, {"name": "x"}, source="c.yaml")
    with pytest.raises(ConfigError, match=r"inner.mode must be one of \['a', 'b'\]"):
        from_mapping(_Outer, {"name": "x", "inner": {"size": 1, "mode": "c"}}, source="c.yaml")
    with pytest.raises(ConfigError, match=r"values\[1\] must be a number"):
        from_mapping(_Outer, {"name": "x", "inner": {"size": 1}, "values": [1, "z"]}, source="c.yaml")
    with pytest.raises(ConfigError, match="inner.size must be an integer"):
        from_mapping(_Outer, {"name": "x", "inner": {"size": True}}, source="c.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        from_mapping(_Outer, [1, 2], source="c.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_yaml(tmp_path / "missing.yaml")


def test_label_table_from_names_carries_snomed_codes():
    table = LabelTable.from_names(["liver", "Kidney Left", "liver_tumor", "my_structure"])
    assert table[1].code == Code("10200004", "SCT", "Liver") and table[1].category.value == "123037004"
    assert table[2].code.meaning == "Left kidney"
    assert table[3].category.meaning == "Morphologically Altered Structure"
    assert table[4].code is None and table[4].category is None


def test_read_segmentation_takes_a_folder_labels_json_when_the_map_has_no_sidecar(tmp_path):
    """A dataset's one ``labels.json`` names its maps; a sidecar, when present, wins."""
    import json

    from medseg.io import read_segmentation, write_segmentation
    from medseg.core.labels import LabelTable
    from medseg.core.segmentation import Segmentation
    from medseg.core.volume import Volume

    arr = np.zeros((4, 5, 6), np.uint8)
    arr[1, 1:3, 1:3], arr[2, 3, 4] = 1, 5
    write_segmentation(Segmentation(Volume(arr, np.eye(4)), LabelTable.from_names({1: "a", 5: "b"})),
                       tmp_path / "seg.nii.gz")
    (tmp_path / "seg.labels.json").unlink()
    assert read_segmentation(tmp_path / "seg.nii.gz").labels.names == ["label_1", "label_5"]
    (tmp_path / "labels.json").write_text(json.dumps({"1": "spleen", "5": "liver"}))
    assert read_segmentation(tmp_path / "seg.nii.gz").labels.names == ["spleen", "liver"]
    LabelTable.from_names({1: "own", 5: "names"}).write(tmp_path / "seg.labels.json")
    assert read_segmentation(tmp_path / "seg.nii.gz").labels.names == ["own", "names"]
