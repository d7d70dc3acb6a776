"""Native-resolution boundary refinement of the classical engine (``refine_min_factor``)."""

import numpy as np
import pytest

from medseg.interactive import Session
from medseg.interactive.classical import ClassicalConfig, ClassicalEngine
from medseg.core.volume import Volume


def _blob():
    # an ellipsoid (off-grid centre and radii) of 400 in 0, noise 20; the first ROI (click
    # +- 40 mm) is pooled by 3 x 3 x 2, so the walker's boundary is blocky
    shape = (90, 100, 100)
    g = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    truth = ((g[0] - 44.3) / 12.7) ** 2 + ((g[1] - 50.6) / 14.4) ** 2 + ((g[2] - 49.2) / 11.3) ** 2 <= 1.0
    rng = np.random.default_rng(1)
    a = (np.where(truth, 400.0, 0.0) + rng.normal(0, 20, shape)).astype(np.int16)
    return Volume(a, np.diag([1.0, 1.0, 1.0, 1.0]), {"Modality": "MR"}), truth


@pytest.mark.parametrize("linear_upsample_voxels", [2_000_000, 0])  # linear and nearest upsampling
def test_boundary_is_placed_at_native_resolution_on_a_pooled_grid(linear_upsample_voxels):
    vol, truth = _blob()
    err = {}
    for refine in (0.0, ClassicalConfig().refine_min_factor):
        eng = ClassicalEngine(ClassicalConfig(refine_min_factor=refine,
                                              linear_upsample_voxels=linear_upsample_voxels))
        s = Session(eng)
        s.set_image(vol)
        m = s.add_point((44, 50, 49))
        assert "refine" in eng.timings if refine else "refine" not in eng.timings
        err[refine] = int((m ^ truth).sum())
    # pooled grid alone (3 x 3 x 2): ~35-40 % of the object lost at its blocky boundary;
    # refined at native resolution: ~4 %
    assert err[ClassicalConfig().refine_min_factor] < 0.25 * err[0.0]
    assert err[ClassicalConfig().refine_min_factor] < 0.06 * truth.sum()


def test_no_refinement_on_a_grid_pooled_less_than_the_factor():
    vol, truth = _blob()
    small = Volume(np.ascontiguousarray(vol.array[30:60, 35:65, 35:65]), vol.affine, {"Modality": "MR"})
    eng = ClassicalEngine()
    s = Session(eng)
    s.set_image(small)
    m = s.add_point((14, 15, 14))
    assert m.any()
    assert "refine" not in eng.timings  # 27k voxels: the native grid is the working grid
