"""STL meshes in patient mm, statistics, label maps and the one-call exporter."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from medseg.core.errors import FileFormatError, GeometryError, InputError
from medseg.export import (export_segmentation, label_mesh, label_statistics, parse_formats, write_label_map,
                           write_statistics, write_stl)
from medseg.export.mesh import signed_volume
from medseg.io import read_segmentation
from medseg.core.labels import LabelTable
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume

AFFINES = {
    "axial": np.array([[0, 0, 0.8, -20], [0, 0.9, 0, 10], [2.0, 0, 0, 5], [0, 0, 0, 1]], float),
    # x runs to patient Right: negative determinant, marching cubes' winding flips
    "mirrored": np.array([[0, 0, -0.8, 20], [0, 0.9, 0, 10], [2.0, 0, 0, 5], [0, 0, 0, 1]], float),
}


def _blob(shape=(20, 30, 28)):
    kk, jj, ii = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    ball = ((kk - 9) / 6.0) ** 2 + ((jj - 14) / 9.0) ** 2 + ((ii - 12) / 8.0) ** 2 <= 1
    return ball


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_mesh_vertices_on_label_surface_in_mm(name, tmp_path):
    affine = AFFINES[name]
    mask = _blob()
    verts, faces = label_mesh(mask, affine)
    # surface voxels' centres (inside voxels next to outside, and outside next to inside)
    inner = mask & ~ndimage.binary_erosion(mask)
    outer = ~mask & ndimage.binary_dilation(mask)
    surf = np.argwhere(inner | outer) @ affine[:3, :3].T + affine[:3, 3]
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(surf).query(verts)
    voxel = max(np.linalg.norm(affine[:3, :3], axis=0))
    assert dist.max() <= voxel
    # each vertex lies between an inside and an outside voxel centre
    inside_tree = cKDTree(np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3])
    assert inside_tree.query(verts)[0].max() <= voxel
    # outward normals: positive enclosed volume, close to the voxel volume
    vol = signed_volume(verts, faces)
    voxel_volume = abs(np.linalg.det(affine[:3, :3]))
    assert vol > 0
    assert abs(vol - mask.sum() * voxel_volume) / (mask.sum() * voxel_volume) < 0.08
    seg = Segmentation(Volume(mask.astype(np.uint8), affine), LabelTable.from_names(["blob"]))
    from stl import mesh as stl_mesh

    paths = write_stl(seg, tmp_path / "m")
    m = stl_mesh.Mesh.from_file(str(paths[1]))
    assert np.allclose(np.sort(m.vectors.reshape(-1, 3), axis=0), np.sort(verts[faces].reshape(-1, 3), axis=0), atol=1e-3)
    centre = m.vectors.reshape(-1, 3).mean(0)
    tri_centres = m.vectors.mean(1)
    assert np.mean(np.einsum("ij,ij->i", m.normals, tri_centres - centre) > 0) > 0.97  # normals point out
    assert (m.data["attr"] == 0).all()


def test_stl_ras_space_and_errors(tmp_path):
    seg = Segmentation(Volume(_blob().astype(np.uint8), AFFINES["axial"]), LabelTable.from_names(["blob"]))
    lps = write_stl(seg, tmp_path / "lps")[1]
    ras = write_stl(seg, tmp_path / "ras", space="RAS")[1]
    from stl import mesh as stl_mesh

    a, b = stl_mesh.Mesh.from_file(str(lps)), stl_mesh.Mesh.from_file(str(ras))
    assert np.allclose(a.vectors * [-1, -1, 1], b.vectors, atol=1e-4)
    with pytest.raises(InputError, match="space must be"):
        write_stl(seg, tmp_path / "x", space="XYZ")
    with pytest.raises(InputError, match="cannot mesh an empty mask"):
        label_mesh(np.zeros((3, 3, 3), bool), np.eye(4))


def test_statistics_known_answer(tmp_path):
    affine = np.array([[0, 0, 0.5, 10], [0, 2.0, 0, -4], [3.0, 0, 0, 7], [0, 0, 0, 1]], float)
    lab = np.zeros((10, 12, 14), np.uint8)
    lab[1:3, 1:4, 1:5] = 1  # 24 voxels
    lab[6:9, 6:8, 8:10] = 1  # 12 voxels, separate
    lab[5, 0, 0] = 2
    img = np.arange(lab.size, dtype=np.int16).reshape(lab.shape)
    seg = Segmentation(Volume(lab, affine), LabelTable.from_names(["lesion", "dot", "absent"]))
    stats = label_statistics(seg, Volume(img, affine))
    v = 3.0 * 2.0 * 0.5 / 1000
    les, dot, absent = stats["labels"]
    assert (les["voxels"], dot["voxels"], absent["voxels"]) == (36, 1, 0)
    assert les["volume_ml"] == pytest.approx(36 * v)
    vals = img[lab == 1].astype(float)
    assert les["mean"] == pytest.approx(vals.mean()) and les["std"] == pytest.approx(vals.std())
    assert (les["min"], les["max"]) == (vals.min(), vals.max())
    assert les["instances"]["count"] == 2
    big, small = les["instances"]["items"]
    assert (big["voxels"], small["voxels"]) == (24, 12)
    c = np.argwhere(lab[:5] == 1).mean(0)
    assert np.allclose(big["centroid_lps_mm"], affine[:3, :3] @ c + affine[:3, 3], atol=1e-3)
    assert absent["instances"]["count"] == 0 and absent["mean"] is None
    # diagonal neighbours: one instance with 26-connectivity, two with 6
    lab2 = np.zeros((3, 3, 3), np.uint8)
    lab2[0, 0, 0] = lab2[1, 1, 1] = 1
    s2 = Segmentation(Volume(lab2, np.eye(4)), LabelTable.from_names(["a"]))
    assert label_statistics(s2)["labels"][0]["instances"]["count"] == 1
    assert label_statistics(s2, connectivity=6)["labels"][0]["instances"]["count"] == 2
    paths = write_statistics(stats, tmp_path)
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(stats))
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["name"] for r in rows] == ["lesion", "dot", "absent"] and rows[0]["instances"] == "2"
    inst = list(csv.DictReader(paths["instances_csv"].open()))
    assert len(inst) == 3 and float(inst[0]["centroid_x_mm"]) == big["centroid_lps_mm"][0]
    with pytest.raises(InputError, match="connectivity must be"):
        label_statistics(s2, connectivity=4)
    with pytest.raises(GeometryError, match="must match the image grid"):
        label_statistics(seg, Volume(img[:5], affine))


def test_label_map_roundtrip_and_export_call(phantom, tmp_path):
    image, seg = phantom
    paths = write_label_map(seg, tmp_path / "l.nrrd")
    back = read_segmentation(paths["label_map"])
    assert np.array_equal(back.array, seg.array) and np.allclose(back.affine, seg.affine)
    assert back.labels == seg.labels  # names, colours and SNOMED codes survive
    with pytest.raises(FileFormatError, match="cannot write a label map"):
        write_label_map(seg, tmp_path / "l.png")
    result = export_segmentation(seg, tmp_path / "out", formats="nifti,stl,stats", image=image)
    assert result["files"]["nifti"] == ["labels.labels.json", "labels.nii.gz"]
    assert len(result["files"]["stl"]) == len(seg.present_indices())
    assert result["statistics"]["labels"][0]["name"] == "liver"
    with pytest.raises(InputError, match="need the source DICOM series"):
        export_segmentation(seg, tmp_path / "o2", formats="seg", image=image)
    empty = Segmentation(seg.label_map.with_array(np.zeros_like(seg.array)), seg.labels)
    r = export_segmentation(empty, tmp_path / "o3", formats="stl,stats", image=image)
    assert "stl" in r["skipped"] and r["files"]["stats"]


def test_parse_formats():
    assert parse_formats("nifti, seg,nifti") == ("nifti", "seg")
    with pytest.raises(InputError, match="unknown export format 'png'"):
        parse_formats("nifti,png")
    with pytest.raises(InputError, match="no export format"):
        parse_formats(" , ")
