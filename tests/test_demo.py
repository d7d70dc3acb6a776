"""The README's main job: ``medseg demo`` on the bundled sample study."""

from __future__ import annotations

import json

from medseg.cli import main
from medseg.io import read_segmentation, read_volume
from medseg.samples import sample_dicom_dir


def test_demo_segments_and_exports_the_sample_study(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0
    for name in ("labels.nii.gz", "labels.labels.json", "seg.dcm", "rtstruct.dcm", "stats.csv", "meshes/1_liver.stl"):
        assert (out / name).is_file(), name
    scores = json.loads((out / "dice_vs_reference.json").read_text())
    assert scores["liver"] > 0.9 and scores["kidney_left"] > 0.85, scores
    seg = read_segmentation(out / "labels.nii.gz")
    image = read_volume(sample_dicom_dir())
    image.require_same_grid(seg.label_map)
    assert seg.labels.by_name("liver").code.value == "10200004"
