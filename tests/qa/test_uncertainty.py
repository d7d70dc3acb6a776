"""Uncertainty that means something: errors concentrate where TTA / MC dropout say so.

A tiny UNet with dropout is trained on generated phantoms in the test (~10-20 s on one core);
held-out phantoms are scored. The figures are printed (``pytest -s``) and reported.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from medseg.analysis import metrics
from medseg.core.errors import CancelledError, InputError
from medseg.inference import uncertainty_predictors
from medseg.core.labels import LabelTable
from medseg.analysis.uncertainty import (
    Augmentation,
    SampleAccumulator,
    ensemble_uncertainty,
    estimate_uncertainty,
    mc_dropout_uncertainty,
    review_list,
    structure_scores,
    tta_uncertainty,
    uncertainty_from_samples,
    write_uncertainty,
)
from medseg.core.volume import Volume

from . import tiny_model as tm

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_net():
    with tm.torch_threads(1):
        yield tm.train_tiny_unet()


@pytest.mark.parametrize("seed", [100, 101])
def test_top_uncertain_voxels_hold_the_errors(tiny_net, seed):
    image, truth = tm.phantom(seed)  # held out: the net was trained on seeds 1-4
    with tm.torch_threads(1):
        tta = tta_uncertainty(image, tm.predictor(tiny_net))
        mc = mc_dropout_uncertainty(image, tm.predictor(tiny_net, mc_dropout=True), samples=8)
    for name, res in (("TTA", tta), ("MC dropout", mc)):
        assert res.segmentation.array.shape == image.shape
        assert metrics.dice(res.segmentation.array == 1, truth.array == 1) > 0.75  # the model works
        for kind in ("entropy", "mutual_information", "variance"):
            fig = tm.error_enrichment(res, truth.array, kind=kind)
            print(f"seed {seed} {name:10s} {kind:18s} overall error {fig['overall_error']:.4f} "
                  f"top-10% error {fig['top_error']:.4f} ratio {fig['ratio']:.1f}x "
                  f"errors caught {fig['errors_caught']:.2f}")
            assert fig["ratio"] >= 3.0, (name, kind, fig)


def test_tta_inverts_spatial_augmentations():
    """An equivariant predictor (threshold) gives the same answer from every view once inverted."""
    image, truth = tm.phantom(7)
    fine = Volume.from_spacing(image.array, image.spacing)

    def threshold(volume):
        fg = (volume.array > 100).astype(np.float32)  # kidneys, aorta, spine
        return np.stack([1 - fg, fg])

    augs = [Augmentation("id"), Augmentation("rot", rotate_deg=10.0), Augmentation("zoom", scale=1.1),
            Augmentation("both", rotate_deg=-8.0, scale=0.92)]
    res = tta_uncertainty(fine, threshold, augmentations=augs, labels=LabelTable.from_names(["bright"]))
    direct = threshold(fine)[1] > 0.5
    assert metrics.dice(res.segmentation.array == 1, direct) > 0.95
    # disagreement only on boundaries: the uncertain voxels lie next to the direct mask's surface
    from scipy import ndimage

    band = ndimage.binary_dilation(direct, iterations=2) & ~ndimage.binary_erosion(direct, iterations=2)
    unc = res.entropy.array > 0.2
    assert unc.sum() > 0 and (unc & band).sum() / unc.sum() > 0.9


def test_accumulator_matches_closed_form():
    grid = Volume.from_spacing(np.zeros((1, 1, 2)), (1.0, 1.0, 1.0))
    s1 = np.array([[0.9, 0.5], [0.1, 0.5]], np.float32).reshape(2, 1, 1, 2)
    s2 = np.array([[0.1, 0.5], [0.9, 0.5]], np.float32).reshape(2, 1, 1, 2)
    res = uncertainty_from_samples([s1, s2], reference=grid, labels=LabelTable.from_names(["x"]))
    h = lambda p: -sum(q * math.log(q) for q in p)  # noqa: E731
    # voxel 0: samples disagree (mean 0.5/0.5) → entropy 1, MI = 1 - H(0.9, 0.1)/ln 2
    assert res.entropy.array[0, 0, 0] == pytest.approx(1.0, abs=1e-5)
    assert res.mutual_information.array[0, 0, 0] == pytest.approx(1 - h([0.9, 0.1]) / math.log(2), abs=1e-5)
    assert res.variance.array[0, 0, 0] == pytest.approx(0.16, abs=1e-5)
    # voxel 1: both samples 0.5/0.5 → entropy 1, no disagreement
    assert res.entropy.array[0, 0, 1] == pytest.approx(1.0, abs=1e-5)
    assert res.mutual_information.array[0, 0, 1] == pytest.approx(0.0, abs=1e-5)
    assert res.variance.array[0, 0, 1] == pytest.approx(0.0, abs=1e-6)
    assert res.n_samples == 2 and res.segmentation.probabilities.array.shape == (2, 1, 1, 2)
    # three classes, three samples: variance = half the summed per-class variance
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=(3, 2)).transpose(0, 2, 1).reshape(3, 3, 1, 1, 2).astype(np.float32)
    res3 = uncertainty_from_samples(list(p), reference=grid, labels=LabelTable.from_names(["a", "b"]))
    np.testing.assert_allclose(res3.variance.array, 0.5 * p.var(axis=0).sum(axis=0), atol=1e-5)
    mean = p.mean(0)
    np.testing.assert_allclose(res3.entropy.array, -(mean * np.log(mean)).sum(0) / math.log(3), atol=1e-5)


def _fuzzy_result():
    """Two structures: a crisp box and a blob whose edge is uncertain on slice 5 only."""
    shape = (8, 20, 20)
    grid = Volume.from_spacing(np.zeros(shape), (2.0, 1.0, 1.0))
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(4):
        lab = np.zeros(shape, np.int64)
        lab[:, 2:6, 2:6] = 1
        lab[3:7, 10:16, 10:16] = 2
        edge = rng.random((6, 6)) < 0.5
        lab[5, 9:15, 9:15][edge] = 2
        samples.append(np.moveaxis(np.eye(3, dtype=np.float32)[lab], -1, 0))
    return uncertainty_from_samples(samples, reference=grid, labels=LabelTable.from_names(["box", "blob"]))


def test_structure_scores_and_review_list():
    res = _fuzzy_result()
    scores = structure_scores(res)
    assert [s.name for s in scores] == ["blob", "box"]
    assert scores[1].score == 0.0 and scores[1].volume_cv == 0.0
    assert 0 < scores[0].score < 1 and scores[0].volume_cv > 0
    review = review_list(res)
    assert review[0].name == "blob" and review[0].slice_index == 5 and review[0].rank == 1
    assert all(r.name == "blob" for r in review)  # the crisp box needs no review
    k, j, i = review[0].centre_kji
    assert k == 5 and 8 <= j <= 15 and 8 <= i <= 15
    with pytest.raises(InputError, match="need 0 < low < high < 1"):
        structure_scores(res, low=0.9, high=0.1)
    with pytest.raises(InputError, match="top and per_structure must be >= 1"):
        review_list(res, top=0)
    with pytest.raises(InputError, match="kind must be"):
        res.map("std")


def test_errors_and_warnings(caplog):
    grid = Volume.from_spacing(np.zeros((4, 4, 4)), (1.0, 1.0, 1.0))
    good = lambda v: np.stack([np.ones(v.shape), np.zeros(v.shape)]).astype(np.float32)  # noqa: E731
    with pytest.raises(InputError, match="predictor must return"):
        tta_uncertainty(grid, lambda v: np.zeros(v.shape))
    with pytest.raises(InputError, match="augmentations is empty"):
        tta_uncertainty(grid, good, augmentations=[])
    with pytest.raises(InputError, match="samples >= 2"):
        mc_dropout_uncertainty(grid, good, samples=1)
    with pytest.raises(InputError, match="at least 2 predictors"):
        ensemble_uncertainty(grid, [good])
    with pytest.raises(CancelledError, match="cancelled"):
        tta_uncertainty(grid, good, cancel=lambda: True)
    with pytest.raises(InputError, match="no samples were given"):
        uncertainty_from_samples([], reference=grid, labels=LabelTable.from_names(["x"]))
    with pytest.raises(InputError, match=r"must be \(C, Z, Y, X\)"):
        uncertainty_from_samples([np.zeros((4, 4, 4))], reference=grid, labels=LabelTable.from_names(["x"]))
    with pytest.raises(InputError, match="at least 2 channels"):
        SampleAccumulator(grid, 1)
    acc = SampleAccumulator(grid, 2)
    with pytest.raises(InputError, match="no samples were added"):
        acc.result(LabelTable.from_names(["x"]))
    with pytest.raises(InputError, match="expected"):
        acc.add(np.zeros((3, 4, 4, 4)))
    acc.add(good(grid))
    with pytest.raises(InputError, match="label table has 2 labels"):
        acc.result(LabelTable.from_names(["x", "y"]))
    with pytest.raises(InputError, match="method must be"):
        estimate_uncertainty(grid, good, method="bayes")
    with pytest.raises(InputError, match="TTA uses 1..8 views"):
        estimate_uncertainty(grid, good, samples=9)
    with pytest.raises(InputError, match="needs a sequence of predictors"):
        estimate_uncertainty(grid, good, method="ensemble")
    with pytest.raises(InputError, match="not a sequence"):
        estimate_uncertainty(grid, [good, good], method="tta")
    with pytest.raises(InputError, match="needs models="):
        uncertainty_predictors("ensemble", models=["a"])
    with pytest.raises(InputError, match="method must be"):
        uncertainty_predictors("bayes")
    with caplog.at_level(logging.WARNING):
        mc_dropout_uncertainty(grid, good, samples=2)
    assert "no active dropout" in caplog.text
    ens = ensemble_uncertainty(grid, [good, lambda v: good(v)[::-1].copy()])
    assert ens.method == "ensemble" and float(ens.mutual_information.array.min()) == pytest.approx(1.0, abs=1e-4)


def test_medseg_model_pipeline_and_cli(tiny_net, tmp_path, capsys):
    """Through medseg.models / medseg.inference: TTA, MC dropout, ensemble, files and the CLI."""
    from medseg.cli import main
    from medseg.io import read_volume, write_volume

    model_path = tm.save_as_medseg_model(tiny_net, tmp_path / "model")
    image, truth = tm.phantom(100)
    with tm.torch_threads(1):
        path = str(model_path)
        tta = estimate_uncertainty(image, uncertainty_predictors("tta", path, device="cpu"), samples=3)
        mc = estimate_uncertainty(image, uncertainty_predictors("mc_dropout", path, device="cpu"),
                                  method="mc_dropout", samples=3)
        ens = estimate_uncertainty(image, uncertainty_predictors("ensemble", models=[path] * 2, device="cpu"),
                                   method="ensemble")
    for res in (tta, mc, ens):
        assert res.labels.names[0] == "liver" and res.entropy.array.shape == image.shape
        assert metrics.dice(res.segmentation.array == 1, truth.array == 1) > 0.75
    assert mc.mutual_information.array.max() > 0.05  # dropout is active through medseg.inference
    assert ens.mutual_information.array.max() < 1e-4  # two identical members agree everywhere
    paths = write_uncertainty(tta, tmp_path / "out")
    js = json.loads(paths["json"].read_text())
    assert js["method"] == "tta" and js["samples"] == 3 and js["review"]
    assert read_volume(paths["entropy"]).same_grid(image)

    write_volume(image, tmp_path / "image.nii.gz")
    with tm.torch_threads(1):
        rc = main(["uncertainty", str(tmp_path / "image.nii.gz"), "-o", str(tmp_path / "cli"), "--model",
                   str(model_path), "--samples", "2", "--device", "cpu"])
    assert rc == 0 and (tmp_path / "cli" / "review.csv").exists()
    assert "uncertainty.json" in capsys.readouterr().out
