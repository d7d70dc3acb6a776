"""The classical engine's working grid: block-mean pooling and nearest upsampling, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.interactive._grid import pool_mean, upsample_nearest


@pytest.mark.parametrize("shape, f", [((7, 10, 11), (2, 3, 4)), ((8, 9, 12), (1, 3, 4)),
                                      ((9, 6, 5), (4, 1, 1)), ((6, 6, 6), (3, 3, 3))])
def test_pool_mean_is_the_mean_of_each_full_block_and_a_sample_at_ragged_edges(shape, f):
    rng = np.random.default_rng(0)
    a = rng.integers(-1000, 1000, shape).astype(np.int16)
    f = np.asarray(f)
    wshape = tuple(int(np.ceil(n / k)) for n, k in zip(shape, f))
    pooled = pool_mean(a, f, wshape)
    assert pooled.dtype == np.float32 and pooled.shape == wshape
    full = [n // k for n, k in zip(shape, f)]
    for idx in np.ndindex(*wshape):
        if all(i < n for i, n in zip(idx, full)):
            block = a[tuple(slice(i * k, (i + 1) * k) for i, k in zip(idx, f))]
            assert pooled[idx] == pytest.approx(block.mean(), abs=1e-3), idx
        else:  # a ragged block: its first voxel
            assert pooled[idx] == a[tuple(i * k for i, k in zip(idx, f))], idx
    assert not np.shares_memory(pooled, a)


@pytest.mark.parametrize("shape, f", [((7, 10, 11), (2, 3, 4)), ((8, 9, 12), (1, 3, 4)), ((5, 5, 5), (1, 1, 1))])
def test_upsample_nearest_copies_each_working_voxel_to_its_block(shape, f):
    rng = np.random.default_rng(1)
    f = np.asarray(f)
    wshape = tuple(int(np.ceil(n / k)) for n, k in zip(shape, f))
    m = rng.random(wshape) > 0.5
    up = upsample_nearest(m, f, shape)
    assert up.shape == shape and up.flags.c_contiguous
    expected = m[np.ix_(*[np.arange(n) // k for n, k in zip(shape, f)])]
    np.testing.assert_array_equal(up, expected)


@pytest.mark.parametrize("wshape, shape", [((33, 39, 39), (65, 117, 117)), ((10, 12, 7), (31, 36, 20)),
                                           ((5, 6, 7), (5, 18, 14))])
def test_zoom_linear_matches_scipy_zoom_with_aligned_block_centres(wshape, shape):
    from scipy import ndimage as ndi

    from medseg.interactive._grid import zoom_linear

    x = np.random.default_rng(2).random(wshape).astype(np.float32)
    ref = ndi.zoom(x, [n / w for n, w in zip(shape, wshape)], order=1, grid_mode=True, mode="nearest")
    out = zoom_linear(x, shape)
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_cached_click_terms_give_the_same_mask_as_a_fresh_computation():
    from medseg.interactive.classical import ClassicalEngine
    from medseg.core.prompts import ObjectPrompts
    from medseg.core.volume import Volume

    rng = np.random.default_rng(3)
    a = rng.normal(0, 15, (40, 90, 90)).astype(np.float32)
    a[10:30, 20:60, 20:50] += 300.0
    a[10:30, 20:60, 55:75] += 280.0  # a similar neighbour, to be cut off by the negative click
    eng = ClassicalEngine()
    eng.set_image(Volume(a, np.eye(4), {"Modality": "MR"}))
    prompts = ObjectPrompts(np.array([[20, 40, 30], [15, 30, 40]]), np.array([[20, 40, 65]]))
    sl1, m1 = eng.predict(prompts)
    terms = eng._cache.terms
    assert len(terms) == 3  # one term per click
    sl2, m2 = eng.predict(prompts)  # every term from the cache
    assert eng._cache.terms is terms
    eng.reset()
    sl3, m3 = eng.predict(prompts)  # computed afresh
    assert sl1 == sl2 == sl3
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(m1, m3)
    full = np.zeros(a.shape, bool)
    full[sl1] = m1
    assert full[20, 40, 30] and full[15, 30, 40] and not full[20, 40, 65]
