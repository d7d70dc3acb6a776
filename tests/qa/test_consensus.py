"""STAPLE recovers known rater performance; voting, soft consensus, agreement matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from medseg.analysis import consensus as cs
from medseg.core.errors import CancelledError, GeometryError, InputError
from medseg.core.labels import LabelTable
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume

SENS = np.array([0.95, 0.85, 0.70, 0.90, 0.60])
SPEC = np.array([0.99, 0.97, 0.995, 0.93, 0.98])


def _truth(shape=(24, 48, 48)):
    zz, yy, xx = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    return ((zz - 12) / 9.0) ** 2 + ((yy - 24) / 16.0) ** 2 + ((xx - 22) / 14.0) ** 2 <= 1.0


def _raters(truth, sens, spec, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for se, sp in zip(sens, spec):
        u = rng.random(truth.shape)
        out.append(np.where(truth, u < se, u >= sp).astype(np.uint8))
    return out


def _reference_staple(raters, iterations=200):
    """Textbook binary STAPLE EM (Warfield 2004) with ITK's fixed global prior."""
    d = np.stack([r.ravel().astype(float) for r in raters])  # (R, N)
    prior = d.mean()
    p, q = np.full(len(raters), 0.99), np.full(len(raters), 0.99)
    for _ in range(iterations):
        a = prior * np.prod(np.where(d == 1, p[:, None], 1 - p[:, None]), axis=0)
        b = (1 - prior) * np.prod(np.where(d == 0, q[:, None], 1 - q[:, None]), axis=0)
        w = a / (a + b)
        p = (d * w).sum(1) / w.sum()
        q = ((1 - d) * (1 - w)).sum(1) / (1 - w).sum()
    return w.reshape(raters[0].shape), p, q


def test_staple_recovers_known_rater_performance_and_matches_simpleitk():
    truth = _truth()
    raters = _raters(truth, SENS, SPEC)
    res = cs.staple(raters)
    np.testing.assert_allclose(res.sensitivity, SENS, atol=0.03)
    np.testing.assert_allclose(res.specificity, SPEC, atol=0.005)
    assert cs.metrics.dice(res.mask, truth) > 0.97
    # identical to SimpleITK's filter called directly
    direct = sitk.STAPLE([sitk.GetImageFromArray(r) for r in raters], 1.0)
    np.testing.assert_allclose(res.probability, sitk.GetArrayFromImage(direct), atol=1e-6)
    # and to an independent EM implementation of the textbook algorithm
    w, p, q = _reference_staple(raters)
    np.testing.assert_allclose(res.sensitivity, p, atol=2e-3)
    np.testing.assert_allclose(res.specificity, q, atol=2e-3)
    assert np.mean(np.abs(res.probability - w)) < 2e-3


def test_multi_label_staple_recovers_sensitivity():
    truth = _truth().astype(np.uint8)
    truth[:, :, 30:] *= 2  # two labels: 1 and 2
    truth[truth == 2] = 7  # sparse index
    rng = np.random.default_rng(3)
    sens = [0.95, 0.8, 0.7, 0.9]
    raters = []
    for se in sens:
        r = truth.copy()
        fg = truth > 0
        miss = fg & (rng.random(truth.shape) > se)
        r[miss] = 0
        fp = (~fg) & (rng.random(truth.shape) < 0.01)
        r[fp] = rng.choice([1, 7], size=int(fp.sum()))
        raters.append(r)
    res = cs.multi_label_staple(raters)
    assert res.labels == [0, 1, 7]
    np.testing.assert_allclose(res.sensitivity[:, 1], sens, atol=0.03)
    np.testing.assert_allclose(res.sensitivity[:, 2], sens, atol=0.03)
    assert np.all(res.specificity[:, 1:] > 0.98)
    # specificity is prior-weighted over the other true labels: it matches each rater's empirical
    # P(says not l | truth not l), dominated by the large background
    for c, lab in enumerate(res.labels):
        emp = [np.mean(r[truth != lab] != lab) for r in raters]
        np.testing.assert_allclose(res.specificity[:, c], emp, atol=0.01)
    assert cs.metrics.dice(res.label_map == 7, truth == 7) > 0.97
    # same label map as SimpleITK's filter on the compacted labels
    lut = np.zeros(8, np.uint16)
    lut[[0, 1, 7]] = [0, 1, 2]
    direct = sitk.GetArrayFromImage(sitk.MultiLabelSTAPLE([sitk.GetImageFromArray(lut[r]) for r in raters]))
    np.testing.assert_array_equal(np.asarray([0, 1, 7, 0])[direct], res.label_map)


def test_majority_soft_and_disagreement():
    a = np.zeros((2, 3, 3), np.uint8)
    b, c = a.copy(), a.copy()
    a[0, 0, 0] = b[0, 0, 0] = 1
    c[0, 0, 0] = 2
    a[1, 1, 1], b[1, 1, 1], c[1, 1, 1] = 1, 2, 3  # three-way tie
    mv = cs.majority_vote([a, b, c])
    assert mv[0, 0, 0] == 1 and mv[1, 1, 1] == 0
    assert cs.majority_vote([a, b, c], undecided=9)[1, 1, 1] == 9
    probs, labels = cs.soft_consensus([a, b, c])
    assert labels == [0, 1, 2, 3]
    np.testing.assert_allclose(probs.sum(0), 1.0)
    assert probs[1, 0, 0, 0] == pytest.approx(2 / 3)
    dis = cs.disagreement_map([a, b, c])
    assert dis[0, 0, 0] == pytest.approx(1 / 3) and dis[1, 1, 1] == pytest.approx(2 / 3) and dis[0, 2, 2] == 0


def test_agreement_matrices_and_summary():
    truth = _truth()
    raters = _raters(truth, SENS[:3], [1, 1, 1])
    raters.append(np.zeros_like(raters[0]))  # a rater who drew nothing
    ag = cs.agreement_matrices(raters, spacing=(2.0, 0.8, 0.8), names=["a", "b", "c", "empty"])
    d = ag.matrices["dice"][1]
    assert d.shape == (4, 4) and np.allclose(d, d.T) and np.all(np.diag(d) == 1)
    assert d[0, 1] == pytest.approx(cs.metrics.dice(raters[0], raters[1]))
    assert d[0, 3] == 0 and ag.matrices["hd95_mm"][1][0, 3] == math.inf
    s = ag.summary()[1]
    assert s["hd95_mm_undefined_pairs"] == 3 and 0 < s["dice_mean"] < 1 and s["volume_cv"] > 0
    js = ag.to_dict()
    assert js["labels"]["1"]["matrices"]["hd95_mm"][0][3] is None


def test_consensus_one_call_on_segmentations():
    truth = _truth()
    vol = Volume.from_spacing(truth.astype(np.uint8), (3.0, 1.0, 1.0))
    table = LabelTable.from_names({1: "tumour"})
    segs = [Segmentation(vol.with_array(r), table) for r in _raters(truth, SENS, SPEC)]
    res = cs.consensus(segs)
    assert res.segmentation.labels.names == ["tumour"]
    assert res.segmentation.probabilities.array.shape == (2,) + truth.shape
    assert cs.metrics.dice(res.segmentation.array == 1, truth) > 0.97
    assert set(res.raters[0]["1"]) == {"sensitivity", "specificity"}
    # disagreement = share of raters outside the voxel's majority, from the raw votes
    votes = np.sum(_raters(truth, SENS, SPEC), axis=0)
    expect = 1.0 - np.maximum(votes, len(SENS) - votes) / len(SENS)
    np.testing.assert_allclose(res.disagreement.array, expect, atol=1e-6)
    assert res.disagreement.array.max() == pytest.approx(0.4) and res.disagreement.array.min() == 0.0
    mv = cs.consensus(segs, method="majority")
    assert mv.method == "majority" and cs.metrics.dice(mv.segmentation.array == 1, truth) > 0.9
    multi = [Segmentation(vol.with_array(np.where(r > 0, 1 + (np.arange(48) > 24)[None, None, :], 0)),
                          LabelTable.from_names({1: "left", 2: "right"})) for r in _raters(truth, SENS, SPEC)]
    res2 = cs.consensus(multi)
    assert res2.segmentation.labels.names == ["left", "right"] and "2" in res2.raters[0]
    assert res2.segmentation.probabilities.array.shape == (3,) + truth.shape
    lean = cs.consensus(multi, probabilities=False)
    assert lean.segmentation.probabilities is None
    np.testing.assert_array_equal(lean.segmentation.array, res2.segmentation.array)


def test_consensus_errors_and_cancel():
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(InputError, match="at least 2 label maps"):
        cs.staple([a])
    with pytest.raises(InputError, match="all raters must be on one grid"):
        cs.majority_vote([a, np.zeros((4, 4, 5), np.uint8)])
    with pytest.raises(InputError, match=r"must be \(Z, Y, X\)"):
        cs.majority_vote([a, np.zeros((4, 4), np.uint8)])
    with pytest.raises(InputError, match="must hold integers"):
        cs.majority_vote([a, a.astype(float)])
    with pytest.raises(InputError, match="threshold must be"):
        cs.staple([a, a], threshold=1.5)
    with pytest.raises(InputError, match="names has 1 entries"):
        cs.agreement_matrices([a, a], spacing=(1, 1, 1), names=["x"])
    v1 = Volume.from_spacing(a, (1, 1, 1))
    v2 = Volume.from_spacing(a, (2, 1, 1))
    with pytest.raises(GeometryError, match="must match the image grid"):
        cs.majority_vote([v1, v2])
    seg = Segmentation(v1, LabelTable.from_names(["x"]))
    with pytest.raises(InputError, match="method must be"):
        cs.consensus([seg, seg], method="vote")
    with pytest.raises(InputError, match="must be a Segmentation"):
        cs.consensus([seg, a])
    raters = _raters(_truth(), SENS, SPEC)
    with pytest.raises(CancelledError, match="cancelled"):
        cs.staple(raters, cancel=lambda: True)
    empty = cs.staple([a, a])
    assert not empty.mask.any() and empty.iterations == 0


def _label_segs(truth, label, *, names=None, seed=0):
    vol = Volume.from_spacing(truth.astype(np.uint16), (3.0, 1.0, 1.0))
    table = LabelTable.from_names(names or {label: "tumour"})
    raters = _raters(truth, SENS, SPEC, seed=seed)
    return [Segmentation(vol.with_array((r * label).astype(np.uint16)), table) for r in raters], raters


@pytest.mark.parametrize("label", [6, 2])
def test_single_label_consensus_keeps_its_label(label):
    """Raters who all draw label 6 (not 1): STAPLE runs on label 6 and the result is label 6."""
    truth = _truth()
    segs, raters = _label_segs(truth, label)
    res = cs.consensus(segs)
    ref = cs.staple(raters)
    np.testing.assert_array_equal(res.segmentation.array, np.where(ref.mask, label, 0))
    assert cs.metrics.dice(res.segmentation.array == label, truth) > 0.97
    assert res.segmentation.labels.indices == [label] and str(label) in res.raters[0]
    np.testing.assert_allclose(res.raters[0][str(label)]["sensitivity"], ref.sensitivity[0])


def test_probability_map_values_and_channels():
    """Channel 0 is background, channel c the c-th label of the table; values are probabilities
    in [0, 1] that sum to 1, equal to STAPLE's (binary) or to the vote shares (multi-label)."""
    truth = _truth()
    segs, raters = _label_segs(truth, 6)
    prob = cs.consensus(segs).segmentation.probabilities.array
    p = cs.staple(raters).probability
    np.testing.assert_allclose(prob[1], p, atol=1e-6)
    np.testing.assert_allclose(prob[0], 1.0 - p, atol=1e-6)
    assert prob.min() >= 0.0 and prob.max() <= 1.0 and prob[1].max() > 0.99
    # multi-label: the names are given in another order than the indices
    split = (np.arange(truth.shape[2]) > 24)[None, None, :]
    table = LabelTable.from_names({3: "right", 1: "left"})
    maps = [np.where(r > 0, np.where(split, 3, 1), 0).astype(np.uint8) for r in raters]
    vol = Volume.from_spacing(maps[0], (3.0, 1.0, 1.0))
    res = cs.consensus([Segmentation(vol.with_array(m), table) for m in maps])
    shares, labels = cs.soft_consensus(maps)
    chan = [0] + res.segmentation.labels.indices
    assert res.segmentation.labels.indices == table.indices
    full = res.segmentation.probabilities.array
    assert full.shape == (3,) + truth.shape
    for c, lab in enumerate(chan):
        np.testing.assert_allclose(full[c], shares[labels.index(lab)], atol=1e-6)
    np.testing.assert_allclose(full.sum(0), 1.0, atol=1e-5)
    c3 = chan.index(3)  # label 3 ("right") is drawn at x > 24
    assert full[c3][truth & split].mean() > 0.7 and full[c3][truth & ~split].max() < 0.5


@pytest.mark.parametrize("labels", [[256], [300], [255, 256], [1, 300]])
@pytest.mark.parametrize("method", ["staple", "majority"])
def test_labels_from_256_up_survive_consensus(labels, method):
    """Label indices >= 256 need 16 bits: none may wrap to 0 (or another label)."""
    truth = np.zeros((8, 16, 16), bool)
    truth[1:7, 2:14, 2:14] = True
    split = (np.arange(16) >= 8)[None, None, :]
    names = {l: f"l{l}" for l in labels}
    raters = _raters(truth, SENS[:3], SPEC[:3], seed=5)
    maps = [np.where(r > 0, np.where(split, labels[-1], labels[0]), 0).astype(np.uint16) for r in raters]
    vol = Volume.from_spacing(maps[0], (1.0, 1.0, 1.0))
    res = cs.consensus([Segmentation(vol.with_array(m), LabelTable.from_names(names)) for m in maps], method=method)
    out = res.segmentation.array
    assert set(np.unique(out)) == {0, *labels}
    expect = cs.majority_vote(maps)
    assert cs.metrics.dice(out > 0, expect > 0) > 0.9
    if len(labels) == 2:
        assert not np.any((out == labels[0]) & split) and not np.any((out == labels[1]) & ~split)


def test_progress_names_and_optional_probabilities():
    """STAPLE reports progress (without a cancel callback too); rater names reach the table;
    probabilities=False leaves them out on the single-label path as well."""
    truth = _truth((12, 24, 24))
    raters = _raters(truth, SENS[:3], SPEC[:3])
    calls = []
    cs.staple(raters, progress=lambda d, t, m: calls.append((d, t, m)))
    assert calls[0][:2] == (0, 100) and calls[-1][:2] == (100, 100) and {m for *_, m in calls} == {"STAPLE"}
    calls.clear()
    cs.multi_label_staple(raters, progress=lambda d, t, m: calls.append((d, t, m)))
    assert calls[-1] == (100, 100, "multi-label STAPLE")
    vol = Volume.from_spacing(raters[0], (1.0, 1.0, 1.0))
    segs = [Segmentation(vol.with_array(r), LabelTable.from_names({1: "x"})) for r in raters]
    res = cs.consensus(segs, names=["ann", "bob", "cy"], probabilities=False)
    assert [r["name"] for r in res.raters] == ["ann", "bob", "cy"]
    assert res.segmentation.probabilities is None
    assert [r["name"] for r in cs.consensus(segs).raters] == ["rater1", "rater2", "rater3"]


def test_agreement_diagonal_progress_and_results_are_frozen():
    import dataclasses

    truth = _truth((12, 24, 24))
    raters = _raters(truth, SENS[:3], SPEC[:3]) + [np.zeros(truth.shape, np.uint8)]
    steps = []
    ag = cs.agreement_matrices(raters, spacing=(1.0, 1.0, 1.0), progress=lambda d, t, m: steps.append((d, t)))
    assert steps[-1] == (6, 6)  # 1 label x 6 pairs of 4 raters
    hd, nsd = ag.matrices["hd95_mm"][1], ag.matrices["surface_dice"][1]
    assert hd[0, 0] == 0.0 and nsd[0, 0] == 1.0  # a rater agrees perfectly with itself
    assert math.isnan(hd[3, 3]) and math.isnan(nsd[3, 3])  # ... unless it drew nothing
    s = ag.summary()[1]
    assert s["dice_mean"] == pytest.approx(np.mean(ag.matrices["dice"][1][np.triu_indices(4, 1)]))
    res = cs.staple(raters[:3])
    vol = Volume.from_spacing(raters[0], (1.0, 1.0, 1.0))
    one = cs.consensus([Segmentation(vol.with_array(r), LabelTable.from_names({1: "x"})) for r in raters[:3]])
    for frozen in (res, ag, cs.multi_label_staple(raters[:3]), one):
        with pytest.raises(dataclasses.FrozenInstanceError):
            frozen.labels = []  # type: ignore[misc]


def test_multi_label_specificity_is_weighted_by_the_label_priors():
    """A rater who calls 30 % of label 7 "1" but almost never marks background as 1: P(says not 1 |
    truth not 1) is about 0.98 (background dominates), not the unweighted mean over the labels (~0.85)."""
    truth = _truth().astype(np.uint8)
    truth[:, :, 30:] *= 7
    rng = np.random.default_rng(11)
    raters = []
    for n in range(4):
        r = truth.copy()
        r[(truth > 0) & (rng.random(truth.shape) > 0.9)] = 0
        if n == 0:
            r[(truth == 7) & (rng.random(truth.shape) < 0.3)] = 1
        raters.append(r)
    res = cs.multi_label_staple(raters)
    c1 = res.labels.index(1)
    emp = np.mean(raters[0][truth != 1] != 1)
    assert emp > 0.95
    assert res.specificity[0, c1] == pytest.approx(emp, abs=0.01)
