"""medseg.analysis.metrics against MONAI's reference implementations (anisotropic spacing, empty masks)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from medseg.analysis import metrics
from medseg.core.errors import InputError

torch = pytest.importorskip("torch")
monai_metrics = pytest.importorskip("monai.metrics")


def _blob(shape, centre, radii, *, seed=None):
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    r = ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2
    m = r <= 1.0
    if seed is not None:  # ragged boundary
        rng = np.random.default_rng(seed)
        m ^= (np.abs(r - 1.0) < 0.15) & (rng.random(shape) < 0.5)
    return m


def _monai(pred, ref, spacing, tol):
    """MONAI's dice, iou, hd95, surface dice for one binary pair."""
    yp = torch.from_numpy(np.stack([~pred, pred])[None].astype(np.float32))
    y = torch.from_numpy(np.stack([~ref, ref])[None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = monai_metrics.compute_dice(yp, y, include_background=False, ignore_empty=False)
        j = monai_metrics.compute_iou(yp, y, include_background=False, ignore_empty=False)
        hd = monai_metrics.compute_hausdorff_distance(yp, y, include_background=False, percentile=95,
                                                      spacing=list(spacing))
        hdmax = monai_metrics.compute_hausdorff_distance(yp, y, include_background=False, spacing=list(spacing))
        nsd = monai_metrics.compute_surface_dice(yp, y, [tol], include_background=False, spacing=list(spacing))
    return float(d), float(j), float(hd), float(hdmax), float(nsd)


SHAPE = (20, 40, 36)
CASES = {
    "overlap": (_blob(SHAPE, (10, 20, 18), (6, 12, 10), seed=1), _blob(SHAPE, (11, 18, 19), (5, 11, 12), seed=2)),
    "disjoint": (_blob(SHAPE, (5, 8, 8), (3, 5, 5)), _blob(SHAPE, (14, 30, 28), (4, 6, 5))),
    "touching_border": (_blob(SHAPE, (0, 20, 18), (6, 25, 10)), _blob(SHAPE, (2, 22, 18), (6, 22, 12), seed=3)),
    "single_voxel": (np.pad(np.ones((1, 1, 1), bool), ((5, 14), (6, 33), (7, 28))), _blob(SHAPE, (6, 8, 8), (2, 3, 3))),
    "identical": (_blob(SHAPE, (10, 20, 18), (6, 12, 10), seed=4),) * 2,
}


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 0.7), (0.5, 2.5, 1.2)])
@pytest.mark.parametrize("case", sorted(CASES))
def test_metrics_match_monai(case, spacing):
    a, b = CASES[case]
    tol = 1.5
    d, j, hd, hdmax, nsd = _monai(a, b, spacing, tol)
    assert metrics.dice(a, b) == pytest.approx(d, abs=1e-6)
    assert metrics.iou(a, b) == pytest.approx(j, abs=1e-6)
    assert metrics.hausdorff95(a, b, spacing=spacing) == pytest.approx(hd, rel=1e-5, abs=1e-5)
    assert metrics.hausdorff(a, b, spacing=spacing) == pytest.approx(hdmax, rel=1e-5, abs=1e-5)
    assert metrics.surface_dice(a, b, spacing=spacing, tolerance_mm=tol) == pytest.approx(nsd, abs=1e-6)
    per = metrics.label_metrics(a.astype(np.uint8), b.astype(np.uint8), spacing=spacing, tolerance_mm=tol)[1]
    assert per["dice"] == pytest.approx(d, abs=1e-6)
    assert per["hd95_mm"] == pytest.approx(hd, rel=1e-5, abs=1e-5)
    assert per["surface_dice"] == pytest.approx(nsd, abs=1e-6)


def test_spacing_changes_distances_in_mm():
    a, b = CASES["disjoint"]
    iso = metrics.hausdorff95(a, b, spacing=(1, 1, 1))
    aniso = metrics.hausdorff95(a, b, spacing=(3, 1, 1))
    assert aniso > iso


@pytest.mark.parametrize("which", ["both", "a", "b"])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.7, 0.9)])
def test_empty_mask_conventions_match_monai(which, spacing):
    full = _blob(SHAPE, (10, 20, 18), (6, 12, 10))
    empty = np.zeros(SHAPE, bool)
    a = empty if which in ("both", "a") else full
    b = empty if which in ("both", "b") else full
    d, j, hd, _, nsd = _monai(a, b, spacing, 2.0)
    assert metrics.dice(a, b) == d == (1.0 if which == "both" else 0.0)
    assert metrics.iou(a, b) == j
    ours = metrics.hausdorff95(a, b, spacing=spacing)
    if which == "both":
        assert math.isnan(ours) and math.isnan(hd)
        assert math.isnan(metrics.surface_dice(a, b, spacing=spacing, tolerance_mm=2.0)) and math.isnan(nsd)
    else:
        # MONAI: plain HD is inf, its percentile HD nan (quantile of inf); medseg: inf for both
        assert ours == math.inf and math.isnan(hd)
        assert metrics.hausdorff(a, b, spacing=spacing) == math.inf == _monai(a, b, spacing, 2.0)[3]
        assert metrics.surface_dice(a, b, spacing=spacing, tolerance_mm=2.0) == nsd == 0.0


def test_volume_confusion_and_miou():
    ref = np.zeros((4, 5, 6), np.uint8)
    pred = np.zeros_like(ref)
    ref[:2] = 1
    ref[2:, :2] = 2
    pred[:2, :4] = 1
    pred[2:, :3] = 2
    assert metrics.volume_ml(ref == 1, spacing=(2.0, 1.0, 0.5)) == pytest.approx(60 * 1.0 / 1000)
    m, labels = metrics.confusion_matrix(ref, pred)
    assert labels == [0, 1, 2]
    assert m.sum() == ref.size
    assert m[1, 1] == 48 and m[1, 0] == 12 and m[0, 2] == 12
    mb, lb = metrics.confusion_matrix(ref == 1, pred == 1)  # boolean masks work too
    assert lb == [0, 1] and mb[1, 1] == 48 and mb.sum() == ref.size
    # MONAI's MeanIoU agrees per class
    yp = torch.nn.functional.one_hot(torch.from_numpy(pred.astype(np.int64)), 3).permute(3, 0, 1, 2)[None]
    y = torch.nn.functional.one_hot(torch.from_numpy(ref.astype(np.int64)), 3).permute(3, 0, 1, 2)[None]
    ref_iou = monai_metrics.compute_iou(yp, y, include_background=False).numpy().ravel()
    assert metrics.mean_iou(ref, pred) == pytest.approx(float(ref_iou.mean()))
    # a label absent from both maps is left out of the mean
    assert metrics.mean_iou(ref, pred, labels=[0, 1, 2, 7]) == pytest.approx(float(ref_iou.mean()))
    assert math.isnan(metrics.mean_iou(np.zeros((2, 2, 2), int), np.zeros((2, 2, 2), int)))


def test_lesion_detection_hits_misses_false_positives():
    ref = np.zeros((20, 40, 40), bool)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6, 2:6] = True  # hit
    pred[3:7, 3:7, 3:7] = True
    ref[10:14, 20:24, 20:24] = True  # miss
    ref[15:18, 30:33, 30:33] = True  # barely touched: miss with min_overlap 0.1
    pred[17:19, 32:36, 32:36] = True
    pred[10:13, 2:5, 30:33] = True  # false positive
    det = metrics.detect_lesions(ref, pred, spacing=(2.0, 1.0, 1.0))
    assert (det.hits, det.misses, det.false_positives) == (1, 2, 2)
    assert det.sensitivity == pytest.approx(1 / 3)
    assert det.precision == pytest.approx(1 / 3)
    hit = [r for r in det.reference if r.detected][0]
    assert hit.volume_ml == pytest.approx(64 * 2.0 / 1000)
    assert hit.dice == pytest.approx(2 * 27 / 128)
    loose = metrics.detect_lesions(ref, pred, spacing=(2.0, 1.0, 1.0), min_overlap=0.0)
    assert (loose.hits, loose.misses, loose.false_positives) == (2, 1, 1)
    small = metrics.detect_lesions(ref, pred, spacing=(2.0, 1.0, 1.0), min_volume_ml=0.06)
    assert small.hits + small.misses == 2  # the 27-voxel lesion (0.054 mL) is ignored
    assert len(det.records()) == 6 and set(det.summary()) >= {"hits", "misses", "false_positives", "f1"}
    empty = metrics.detect_lesions(np.zeros_like(ref), np.zeros_like(ref), spacing=(1, 1, 1))
    assert math.isnan(empty.sensitivity) and math.isnan(empty.f1)


def test_input_errors():
    a = np.zeros((3, 3, 3), bool)
    with pytest.raises(InputError, match="same shape"):
        metrics.dice(a, np.zeros((3, 3, 4), bool))
    with pytest.raises(InputError, match="spacing must be 3 positive"):
        metrics.hausdorff95(a, a, spacing=(1.0, -1.0, 1.0))
    with pytest.raises(InputError, match="percentile must be in"):
        metrics.hausdorff(a, a, spacing=1.0, percentile=120)
    with pytest.raises(InputError, match="tolerance_mm must be"):
        metrics.surface_dice(a, a, spacing=1.0, tolerance_mm=-1)
    with pytest.raises(InputError, match="integer label map"):
        metrics.confusion_matrix(a.astype(float), a.astype(int))
    with pytest.raises(InputError, match="negative labels"):
        metrics.confusion_matrix(-np.ones((2, 2, 2), int), np.ones((2, 2, 2), int))
    with pytest.raises(InputError, match="same shape"):
        metrics.confusion_matrix(np.ones((2, 2, 2), int), np.ones((2, 2, 3), int))
    with pytest.raises(InputError, match="same shape"):
        metrics.label_metrics(np.ones((2, 2, 2), int), np.ones((2, 2, 3), int), spacing=(1, 1, 1))
    with pytest.raises(InputError, match="connectivity must be"):
        metrics.detect_lesions(a, a, spacing=(1, 1, 1), connectivity=4)
    with pytest.raises(InputError, match="min_overlap must be"):
        metrics.detect_lesions(a, a, spacing=(1, 1, 1), min_overlap=2)


def test_import_metrics_without_torch():
    import subprocess
    import sys

    code = ("import sys, medseg.analysis.metrics, medseg.analysis.consensus, medseg.analysis.evaluate, medseg.analysis.qa_plots, medseg.analysis.uncertainty\n"
            "print(','.join(m for m in sys.modules if m.split('.')[0] in ('torch', 'monai')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.real_data
def test_real_labels_match_monai_and_report(real_data):
    """Real anisotropic label maps (brain tumour, 0.78 x 0.78 x 6.5 mm; abdominal MR organs)."""
    from scipy import ndimage

    from medseg.analysis.evaluate import evaluate
    from medseg.io import read_segmentation
    from medseg.core.segmentation import Segmentation

    tumour = read_segmentation(real_data / "tumors" / "brain2_mr_label.nrrd")
    ref = tumour.array == 1
    pred = ndimage.binary_dilation(ref, iterations=1) & ~ndimage.binary_erosion(ref, iterations=2)
    pred[:, :, : ref.shape[2] // 2 + 0] &= np.roll(ref, 2, axis=1)[:, :, : ref.shape[2] // 2]
    sp = tumour.label_map.spacing
    assert max(sp) / min(sp) > 5  # strongly anisotropic
    d, j, hd, hdmax, nsd = _monai(pred, ref, sp, 2.0)
    assert metrics.dice(pred, ref) == pytest.approx(d, abs=1e-6)
    assert metrics.iou(pred, ref) == pytest.approx(j, abs=1e-6)
    assert metrics.hausdorff95(pred, ref, spacing=sp) == pytest.approx(hd, rel=1e-5)
    assert metrics.hausdorff(pred, ref, spacing=sp) == pytest.approx(hdmax, rel=1e-5)
    assert metrics.surface_dice(pred, ref, spacing=sp, tolerance_mm=2.0) == pytest.approx(nsd, abs=1e-6)

    organs = read_segmentation(real_data / "mr_abdomen" / "labels.nii.gz")
    shifted = Segmentation(organs.label_map.with_array(np.roll(organs.array, 1, axis=2)), organs.labels)
    rep = evaluate(organs, shifted)
    spx = organs.label_map.spacing
    for row in rep.per_class[:4]:
        if row["empty"]:
            continue
        a, b = organs.array == row["index"], shifted.array == row["index"]
        _, _, hd_m, _, nsd_m = _monai(b, a, spx, 2.0)
        assert row["hd95_mm"] == pytest.approx(hd_m, rel=1e-5)
        assert row["surface_dice"] == pytest.approx(nsd_m, abs=1e-6)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 0.7)])
@pytest.mark.parametrize("case", ["overlap", "disjoint", "single_voxel", "identical"])
def test_average_surface_distance_matches_monai(case, spacing):
    a, b = CASES[case]
    yp = torch.from_numpy(np.stack([~a, a])[None].astype(np.float32))
    y = torch.from_numpy(np.stack([~b, b])[None].astype(np.float32))
    ref = float(monai_metrics.compute_average_surface_distance(yp, y, include_background=False, symmetric=True,
                                                                spacing=list(spacing)))
    assert metrics.average_surface_distance(a, b, spacing=spacing) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    per = metrics.label_metrics(b.astype(np.uint8), a.astype(np.uint8), spacing=spacing)[1]
    assert per["assd_mm"] == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_average_surface_distance_known_value():
    """Two 1-voxel-thick parallel plates 4 voxels apart along z (spacing 2.5 mm): every surface
    voxel is 10 mm from the other plate."""
    a = np.zeros((10, 6, 6), bool)
    b = np.zeros_like(a)
    a[2] = True
    b[6] = True
    assert metrics.average_surface_distance(a, b, spacing=(2.5, 1.0, 1.0)) == pytest.approx(10.0)
    assert metrics.average_surface_distance(a, a, spacing=1.0) == 0.0
    assert math.isnan(metrics.average_surface_distance(np.zeros_like(a), np.zeros_like(a), spacing=1.0))


def test_volume_difference_is_prediction_minus_reference():
    """60 reference voxels, 48 predicted, voxel 2 x 1 x 0.5 mm = 1 mm^3: -0.012 ml, -20 %."""
    ref = np.zeros((4, 5, 6), np.uint8)
    pred = np.zeros_like(ref)
    ref[:2] = 1
    pred[:2, :4] = 1
    pred[3, 0, 0] = 2  # label 2: absent from the reference
    out = metrics.label_metrics(ref, pred, spacing=(2.0, 1.0, 0.5))
    one = out[1]
    assert one["volume_reference_ml"] == pytest.approx(0.060)
    assert one["volume_prediction_ml"] == pytest.approx(0.048)
    assert one["volume_difference_ml"] == pytest.approx(-0.012)
    assert one["volume_difference_pct"] == pytest.approx(-20.0)
    over = metrics.label_metrics(pred, ref, spacing=(2.0, 1.0, 0.5))[1]
    assert over["volume_difference_ml"] == pytest.approx(0.012) and over["volume_difference_pct"] == pytest.approx(25.0)
    assert math.isnan(out[2]["volume_difference_pct"]) and out[2]["volume_difference_ml"] == pytest.approx(0.001)


@pytest.mark.parametrize("spacing", [(1.0, -1.0, 1.0), (1.0, 0.0, 1.0), (1.0, math.nan, 1.0), (1.0, math.inf, 1.0),
                                     (1.0, 1.0), (1.0, 1.0, 1.0, 1.0), -2.0])
def test_every_bad_spacing_is_refused(spacing):
    """Each bad spacing on its own (non-empty masks, so the distances are really computed)."""
    a, b = CASES["overlap"]
    for call in (lambda: metrics.hausdorff95(a, b, spacing=spacing),
                 lambda: metrics.average_surface_distance(a, b, spacing=spacing),
                 lambda: metrics.volume_ml(a, spacing=spacing),
                 lambda: metrics.label_metrics(a.astype(np.uint8), b.astype(np.uint8), spacing=spacing)):
        with pytest.raises(InputError, match="spacing must be 3 positive"):
            call()


@pytest.mark.parametrize("hits, misses, fp, tp, sens, prec, f1", [
    (2, 2, 1, 3, 0.5, 0.75, 0.6),
    (0, 3, 2, 0, 0.0, 0.0, 0.0),             # nothing found, only false positives: 0, not undefined
    (0, 0, 2, 0, math.nan, 0.0, math.nan),   # no reference lesion: sensitivity and F1 undefined
    (0, 2, 0, 0, 0.0, math.nan, math.nan),   # no prediction: precision and F1 undefined
])
def test_lesion_detection_scores(hits, misses, fp, tp, sens, prec, f1):
    import dataclasses

    det = metrics.LesionDetection(hits, misses, fp, tp)
    for got, want in ((det.sensitivity, sens), (det.precision, prec), (det.f1, f1)):
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want)
    s = det.summary()
    assert s["reference_lesions"] == hits + misses and s["predicted_lesions"] == tp + fp
    with pytest.raises(dataclasses.FrozenInstanceError):
        det.hits = 5  # type: ignore[misc]
