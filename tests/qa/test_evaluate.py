"""Gold-standard QA report and the evaluate / consensus CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy import ndimage

from medseg.analysis import metrics
from medseg.cli import main
from medseg.core.errors import GeometryError, InputError
from medseg.analysis.evaluate import default_lesion_labels, evaluate, write_report
from medseg.io import read_segmentation, write_segmentation, write_volume
from medseg.core.labels import LabelTable
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume


def _perturbed(seg):
    """A plausible imperfect prediction: eroded liver, spleen missing, tumour kept, one false lesion."""
    arr = seg.array.copy()
    liver = arr == 1
    arr[liver & ~ndimage.binary_erosion(liver)] = 0
    arr[arr == 2] = 0
    free = np.argwhere((arr == 1) & (seg.array == 1))
    k, j, i = free[len(free) // 3]
    arr[k, j - 1:j + 2, i - 1:i + 2] = 6  # a false-positive lesion inside the liver
    return Segmentation(seg.label_map.with_array(arr), seg.labels)


def test_report_values_files_and_plots(phantom, tmp_path):
    image, ref = phantom
    pred = _perturbed(ref)
    rep = evaluate(ref, pred, tolerance_mm=3.0)
    rows = {r["name"]: r for r in rep.per_class}
    sp = ref.label_map.spacing
    assert rows["liver"]["dice"] == pytest.approx(metrics.dice(ref.array == 1, pred.array == 1))
    assert rows["liver"]["hd95_mm"] == pytest.approx(metrics.hausdorff95(ref.array == 1, pred.array == 1, spacing=sp))
    assert rows["liver"]["volume_difference_ml"] < 0
    assert rows["spleen"]["empty"] == "prediction" and rows["spleen"]["dice"] == 0 and rows["spleen"]["hd95_mm"] == math.inf
    assert rows["aorta"]["dice"] == 1.0 and rows["aorta"]["hd95_mm"] == 0.0
    assert default_lesion_labels(ref.labels) == [6]
    det = rep.lesions[6]
    assert (det.hits, det.misses, det.false_positives) == (1, 0, 1)
    assert rep.confusion.sum() == ref.array.size
    assert rep.confusion[2, 0] == (ref.array == 2).sum()  # all spleen voxels predicted background
    assert rep.mean_iou == pytest.approx(np.mean([r["iou"] for r in rep.per_class]))

    paths = write_report(rep, tmp_path / "qa", reference=ref, prediction=pred, image=image)
    js = json.loads(paths["json"].read_text())
    assert js["per_class"][1]["hd95_mm"] is None and js["per_class"][1]["empty"] == "prediction"
    assert js["lesions"]["6"]["false_positives"] == 1
    with open(paths["per_class_csv"]) as fh:
        assert len(list(csv.DictReader(fh))) == 6
    for key in ("confusion_png", "per_class_png", "error_overlay_png"):
        data = paths[key].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_evaluate_errors(phantom):
    _, ref = phantom
    other = Segmentation(Volume.from_spacing(ref.array, (1.0, 1.0, 1.0)), ref.labels)
    with pytest.raises(GeometryError, match="resample it onto the image first"):
        evaluate(ref, other)
    with pytest.raises(InputError, match="must be a Segmentation"):
        evaluate(ref, ref.array)


def test_label_name_mismatch_is_reported(phantom):
    _, ref = phantom
    renamed = Segmentation(ref.label_map, LabelTable.from_names({i: f"x{i}" for i in range(1, 7)}))
    rep = evaluate(ref, renamed, lesion_labels=[])
    assert len(rep.warnings) == 6 and rep.mean_dice == 1.0 and rep.lesions == {}


def test_cli_evaluate_and_consensus(phantom, tmp_path, capsys):
    image, ref = phantom
    write_volume(image, tmp_path / "image.nii.gz")
    write_segmentation(ref, tmp_path / "ref.nii.gz")
    write_segmentation(_perturbed(ref), tmp_path / "pred.nii.gz")
    assert main(["evaluate", str(tmp_path / "ref.nii.gz"), str(tmp_path / "pred.nii.gz"), "-o",
                 str(tmp_path / "qa"), "--image", str(tmp_path / "image.nii.gz")]) == 0
    assert "mean Dice" in capsys.readouterr().out
    assert (tmp_path / "qa" / "error_overlay.png").exists()

    rng = np.random.default_rng(0)
    raters = []
    for n in range(3):
        arr = ref.array.copy()
        flip = rng.random(arr.shape) < 0.02
        arr[flip] = 0
        p = tmp_path / f"r{n}.nii.gz"
        write_segmentation(Segmentation(ref.label_map.with_array(arr), ref.labels), p)
        raters.append(str(p))
    out = tmp_path / "cons.nii.gz"
    assert main(["consensus", *raters, "-o", str(out), "--probabilities", str(tmp_path / "p.nii.gz"),
                 "--disagreement", str(tmp_path / "d.nii.gz"), "--report", str(tmp_path / "c.json")]) == 0
    fused = read_segmentation(out)
    assert fused.labels.names == ref.labels.names
    assert metrics.dice(fused.array == 1, ref.array == 1) > 0.99
    js = json.loads((tmp_path / "c.json").read_text())
    assert js["raters"][0]["name"] == "r0" and js["raters"][0]["1"]["sensitivity"] == pytest.approx(0.98, abs=0.01)
    assert js["agreement"]["labels"]["1"]["summary"]["dice_mean"] > 0.95
    assert main(["consensus", *raters, "-o", str(out), "--names", "a"]) == 1  # InputError → exit 1
