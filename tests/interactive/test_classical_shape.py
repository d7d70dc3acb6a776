"""Shape-aware parts of the classical engine: elongated click priors, thin-leak cut, ROI growth."""

import numpy as np

from medseg.interactive import Session
from medseg.interactive.classical import ClassicalConfig, ClassicalEngine
from medseg.interactive.classical_stages import cut_thin_leaks, elongated_spatial
from medseg.core.volume import Volume


def _grids(shape, sp):
    return np.meshgrid(*[np.arange(n, dtype=np.float32) * s for n, s in zip(shape, sp)], indexing="ij", sparse=True)


def test_elongated_prior_follows_a_tube():
    shape, sp = (40, 40, 40), (1.0, 1.0, 1.0)
    match = np.zeros(shape, bool)
    match[18:23, 18:23, :] = True  # a tube along x
    c = np.array([20, 20, 20])
    sm = elongated_spatial(match, c, 3.0, sp, _grids(shape, sp), ClassicalConfig(aniso=2.0, aniso_reach=4.0))
    assert sm is not None
    along, across = sm[20, 20, 26], sm[26, 20, 20]  # 6 mm along the tube vs 6 mm across it
    assert along > 3 * across
    # the shortest axis keeps the support radius: across equals the isotropic Gaussian
    np.testing.assert_allclose(across, np.exp(-0.5 * (6.0 / 3.0) ** 2), rtol=0.05)


def test_elongated_prior_is_isotropic_for_a_ball():
    shape, sp = (40, 40, 40), (1.0, 1.0, 1.0)
    zz, yy, xx = np.ogrid[:40, :40, :40]
    match = (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 12 ** 2
    sm = elongated_spatial(match, np.array([20, 20, 20]), 4.0, sp, _grids(shape, sp), ClassicalConfig(aniso=2.0))
    vals = [sm[26, 20, 20], sm[20, 26, 20], sm[20, 20, 26]]
    assert max(vals) / min(vals) < 1.1


def test_thin_leak_is_cut_and_the_body_kept():
    zz, yy, xx = np.ogrid[:30, :30, :60]
    body = (zz - 15) ** 2 + (yy - 15) ** 2 + (xx - 15) ** 2 <= 10 ** 2
    leak = np.zeros_like(body)
    leak[15, 15, 15:58] = True  # one voxel thick, 40 voxels long
    out = cut_thin_leaks(body | leak, np.array([[15, 15, 15]]), (1.0, 1.0, 1.0), 0.5)
    assert np.array_equal(out & body, body)  # the body is untouched, boundary included
    assert not out[15, 15, 35:].any()  # the far part of the leak is gone


def test_thin_leak_cut_keeps_a_thin_target_clicked_in_its_middle():
    m = np.zeros((10, 10, 60), bool)
    m[4:6, 4:6, 5:55] = True  # a thin tube is the object itself: nothing thicker to keep
    out = cut_thin_leaks(m, np.array([[4, 4, 30]]), (1.0, 1.0, 1.0), 0.5)
    assert out.sum() >= 0.9 * m.sum()


def test_large_object_grows_the_roi_beyond_the_first_margin():
    shape = (40, 120, 120)
    a = np.zeros(shape, np.int16)
    a[5:35, 10:110, 10:110] = 400  # a 100 x 100 voxel slab, far larger than the 40 mm margin
    rng = np.random.default_rng(0)
    a = (a + rng.normal(0, 10, shape)).astype(np.int16)
    vol = Volume(a, np.diag([1.0, 1.0, 1.0, 1.0]), {"Modality": "MR"})
    s = Session(ClassicalEngine(ClassicalConfig()))
    s.set_image(vol)
    m = s.add_point((20, 60, 60))
    truth = np.zeros(shape, bool)
    truth[5:35, 10:110, 10:110] = True
    # the first ROI is the click +- 40 mm (x and y in 20..100): the object reaches past it
    assert m[:, :, :20].any() or m[:, :, 101:].any() or m[:, :20].any() or m[:, 101:].any()
    assert (m & ~truth).sum() < 0.01 * truth.sum()  # and it does not leak into the background
    dice = 2 * (m & truth).sum() / (m.sum() + truth.sum())
    assert dice > 0.5  # one click on a 100 mm slab (the previous isotropic prior gave 0.23)


def test_session_passes_locked_labels_only_when_there_are_some():
    shape = (20, 40, 40)
    a = np.zeros(shape, np.int16)
    a[5:15, 5:18, 5:35] = 300
    a[5:15, 22:35, 5:35] = 300
    vol = Volume(a, np.eye(4), {"Modality": "MR"})
    eng = ClassicalEngine()
    seen = []
    real = eng.predict

    def spy(prompts, *, blocked=None, previous=None):
        seen.append(blocked is not None)
        return real(prompts, blocked=blocked, previous=previous)

    eng.predict = spy
    s = Session(eng)
    s.set_image(vol)
    s.add_point((10, 10, 20))
    first = s.accept("a")
    s.add_point((10, 28, 20))
    assert seen == [False, True]
    assert not (s.mask & (s.segmentation.array == first)).any()  # the locked object is not overwritten


def test_texture_keeps_a_smooth_organ_out_of_striped_tissue_of_the_same_mean():
    # an organ (value 100) next to a band of 1-voxel layers 80/120 (mean 100, like the MR
    # abdominal wall next to the liver): smoothed, both look alike; their texture does not
    rng = np.random.default_rng(0)
    shape = (30, 50, 70)
    a = np.zeros(shape, np.float32)
    organ = np.zeros(shape, bool)
    organ[5:25, 10:40, 5:30] = True
    band = np.zeros(shape, bool)
    band[5:25, 10:40, 30:50] = True
    a[organ] = 100.0
    a[band] = np.broadcast_to(np.where(np.arange(70) % 2 == 0, 80.0, 120.0), shape)[band]
    vol = Volume((a + rng.normal(0, 4, shape)).astype(np.int16), np.diag([1.5, 1.5, 1.5, 1.0]), {"Modality": "MR"})
    leaked = {}
    for texture in (0.0, ClassicalConfig().texture):
        s = Session(ClassicalEngine(ClassicalConfig(texture=texture)))
        s.set_image(vol)
        m = s.add_point((15, 25, 17))
        assert (m & organ).sum() > 0.5 * organ.sum()
        leaked[texture] = (m & band).sum() / band.sum()
    assert leaked[0.0] > 0.3  # intensity alone: the click's model takes the band too
    assert leaked[ClassicalConfig().texture] < 0.02  # with texture (the default): it stays out
