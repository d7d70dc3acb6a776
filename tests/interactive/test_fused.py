"""The ``fused`` engine: LiteMedSAM on slices it sees at full resolution, the training-free
engine elsewhere, and a box on small slices turned into the click that agrees with the box."""

from __future__ import annotations

import os

import numpy as np
import pytest

from medseg.core.volume import Volume




@pytest.fixture(scope="module")
def fused(medsam_weights, tmp_path_factory):
    os.environ["MEDSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    from medseg.interactive.fused import FusedEngine
    from medseg.interactive.medsam import MedSAMEngine

    return FusedEngine(MedSAMEngine(background=False))


def _two_blobs(shape=(12, 64, 64)):
    """Blob A (left, bright) and blob B (right, brighter) in noise, 3 x 1 x 1 mm."""
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    c = shape[0] // 2
    a = ((z - c) * 3.0) ** 2 + (y - shape[1] // 2) ** 2 + (x - shape[2] // 4) ** 2 < (shape[2] / 6) ** 2
    b = ((z - c) * 3.0) ** 2 + (y - shape[1] // 2) ** 2 + (x - 3 * shape[2] // 4) ** 2 < (shape[2] / 7) ** 2
    rng = np.random.default_rng(3)
    img = 40.0 + 120.0 * a + 200.0 * b + rng.normal(0, 8, a.shape)
    return Volume(img.astype(np.float32), np.diag([3.0, 1.0, 1.0, 1.0]), {"Modality": "MR"}), a, b


def test_box_on_small_slices_takes_the_click_that_agrees_with_the_box(fused):
    """LiteMedSAM's mask on the wrong blob (its most interior voxel would seed blob B): the
    box's own interior gives the object whose box matches the user's, so the click goes there."""
    vol, a, b = _two_blobs()
    fused.set_image(vol)
    k = a.shape[0] // 2
    j, i = np.nonzero(a[k])
    lo, hi = np.array([k, j.min(), i.min()]), np.array([k, j.max(), i.max()])
    seed = fused._box_seed(b[k], lo, hi)  # a wrong 2D mask in, as LiteMedSAM gives on small slices
    assert a[seed] and not b[seed]
    seed = fused._box_seed(a[k], lo, hi)  # a right one: its interior is kept
    assert a[seed]


def test_small_slices_go_to_the_training_free_engine_large_ones_to_litemedsam(fused):
    from medseg.analysis.metrics import dice
    from medseg.interactive import Session

    vol, a, _ = _two_blobs()  # 64 px slices: enlarged 4x for LiteMedSAM
    s = Session(fused)
    s.set_image(vol)
    k = a.shape[0] // 2
    j, i = np.nonzero(a[k])
    mask = s.add_box((k, j.min() - 1, i.min() - 1), (k, j.max() + 1, i.max() + 1))
    assert fused.last_choice == "classical" and dice(mask, a) > 0.8
    big, a2, _ = _two_blobs((6, 256, 256))
    s.set_image(big)
    s.reset()
    k = 3
    j, i = np.nonzero(a2[k])
    mask = s.add_box((k, j.min() - 1, i.min() - 1), (k, j.max() + 1, i.max() + 1))
    assert fused.last_choice == "medsam" and dice(mask[k], a2[k]) > 0.8


def test_a_click_litemedsam_leaves_out_goes_to_the_training_free_engine(medsam_weights, tmp_path, monkeypatch):
    """On large slices a first click goes to LiteMedSAM when its mask for the training-free
    engine's box holds the clicked pixel; when that mask leaves the pixel out (as LiteMedSAM did
    in the thoracic CT's left lung: an empty mask), the object is the training-free engine's."""
    from medseg.analysis.metrics import dice
    from medseg.interactive import Session
    from medseg.interactive.fused import FusedEngine
    from medseg.interactive.medsam import MedSAMEngine

    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))

    class HoleAtTheClick(MedSAMEngine):
        """LiteMedSAM whose every mask misses a 5 x 5 square around ``hole`` (a model failure)."""

        hole = None

        def decode_slice(self, k, boxes_ji):
            masks, iou = super().decode_slice(k, boxes_ji)
            if self.hole is not None:
                j, i = self.hole
                masks[:, j - 2:j + 3, i - 2:i + 3] = False
            return masks, iou

    big, a, _ = _two_blobs((6, 256, 256))
    k = 3
    click = (k, int(np.mean(np.nonzero(a[k])[0])), int(np.mean(np.nonzero(a[k])[1])))
    for hole, route in ((None, "medsam"), (click[1:], "classical")):
        eng = HoleAtTheClick(background=False)
        eng.hole = hole
        fused = FusedEngine(eng)
        s = Session(fused)
        s.set_image(big)
        mask = s.add_point(click)
        assert fused.last_choice == route
        assert mask[click] and dice(mask, a) > 0.8


def test_a_scribble_reaches_litemedsam_as_one_click_per_slice():
    from medseg.core.prompts import ObjectPrompts
    from medseg.interactive.fused import _one_click_per_slice

    first = np.array([[5, 10, 10]])
    scribble = np.array([[4, 20, 20], [4, 20, 21], [4, 20, 22], [5, 30, 30], [5, 31, 30]])
    p = ObjectPrompts(np.concatenate([first, scribble]), np.zeros((0, 3), int), None, scribble, True)
    q = _one_click_per_slice(p)
    assert q.last.tolist() == [[4, 20, 21], [5, 30, 30]] or q.last.tolist() == [[4, 20, 21], [5, 31, 30]]
    assert len(q.positive) == 3 and [5, 10, 10] in q.positive.tolist()  # earlier prompts stay
    neg = ObjectPrompts(first, scribble, None, scribble, False)
    q = _one_click_per_slice(neg)
    assert len(q.negative) == 2 and q.positive.tolist() == first.tolist()
    click = ObjectPrompts(first, np.zeros((0, 3), int), None, first, True)
    assert _one_click_per_slice(click) is click


def test_scribbles_work_on_both_routes(fused):
    from medseg.interactive import Session

    for shape in ((12, 64, 64), (6, 256, 256)):
        vol, a, _ = _two_blobs(shape)
        s = Session(fused)
        s.set_image(vol)
        k = shape[0] // 2
        j, i = np.nonzero(a[k])
        jm = int(np.median(j))
        line = [(k, jm, int(x)) for x in range(int(np.percentile(i, 30)), int(np.percentile(i, 70)))]
        mask = s.add_scribble(line)
        assert mask[k][jm, line[len(line) // 2][2]] and (mask & a).sum() > 0.5 * mask.sum()
        before = mask.copy()
        edge = int(i.min()) + 2  # a negative stroke near the blob's left edge, off the positive line
        neg = [(k, jm + 2, edge), (k, jm + 3, edge)]
        after = s.add_scribble(neg, positive=False)
        assert after.sum() < before.sum() and not after[neg[0]]
        if fused.last_choice == "medsam":
            assert not np.any(after & ~before)  # LiteMedSAM's negative corrections only intersect


def test_background_embedding_only_where_litemedsam_works(medsam_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path))
    from medseg.interactive.fused import FusedEngine
    from medseg.interactive.medsam import MedSAMEngine

    eng = FusedEngine(MedSAMEngine(background=True))
    assert eng.background and not eng.medsam.background  # the fused engine starts it
    eng.set_image(_two_blobs()[0])  # 64 px slices: every object goes to the training-free engine
    assert eng.small_slices and eng.preparation_progress() == (0, 0) and not eng.medsam.busy
    eng.prefetch(3)
    assert not eng.medsam.busy
    eng.set_image(_two_blobs((4, 256, 256))[0])
    assert not eng.small_slices and eng.preparation_progress()[1] == 4
    eng.cancel()


def test_a_reopened_segment_is_corrected_by_the_training_free_engine(fused):
    """Session.reopen: local corrections of an existing segment go to the training-free engine
    even on full-size slices (LiteMedSAM's slice-wise corrections are for objects it propagated)."""
    from medseg.core.labels import Label, LabelTable
    from medseg.core.segmentation import Segmentation
    from medseg.interactive import Session

    vol, a, _ = _two_blobs((6, 256, 256))
    seg = Segmentation(vol.with_array(a.astype(np.uint8)), LabelTable((Label(1, "blob", (255, 0, 0)),)))
    s = Session(fused)
    s.set_image(vol, segmentation=seg)
    s.reopen(1)
    s.add_point((3, int(np.median(np.nonzero(a[3])[0])), int(np.nonzero(a[3])[1].min()) + 1), positive=False)
    assert fused.last_choice == "classical"
    s.accept()
    s2 = Session(fused)
    s2.set_image(vol)
    j, i = np.nonzero(a[3])
    s2.add_box((3, j.min() - 1, i.min() - 1), (3, j.max() + 1, i.max() + 1))
    assert fused.last_choice == "medsam"  # a new object on full-size slices: LiteMedSAM
