"""The random-walker solver of the classical engine against a direct sparse solve."""

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve

from medseg.interactive._walker import _pcg, edge_weights, solve_walker


def _system(shape=(6, 7, 8), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=shape).astype(np.float32)
    img[:, :, shape[2] // 2:] += 4.0
    w = edge_weights(img[None], (2.0, 1.0, 1.0), beta=4.0)
    prior = rng.uniform(size=shape).astype(np.float32)
    seeds = np.zeros(shape, bool)
    seeds[0, 0, 0] = seeds[-1, -1, -1] = True
    values = np.zeros(shape)
    values[-1, -1, -1] = 1.0
    return w, prior, seeds, values


def test_pcg_matches_direct_solve():
    rng = np.random.default_rng(1)
    n = 200
    m = sparse.random(n, n, density=0.05, random_state=2)
    a = (m @ m.T + sparse.eye(n) * 5.0).tocsr()
    b = rng.normal(size=n)
    x = _pcg(a, b, 1.0 / a.diagonal(), np.zeros(n), rtol=1e-10, maxiter=1000)
    np.testing.assert_allclose(x, spsolve(a.tocsc(), b), rtol=1e-6, atol=1e-8)


def test_walker_honours_seeds_and_follows_intensity():
    w, prior, seeds, values = _system()
    x = solve_walker(w, prior, gamma=0.05, seeds=seeds, seed_values=values, rtol=1e-8, maxiter=2000)
    assert x.shape == prior.shape and x.dtype == np.float32
    assert x[-1, -1, -1] > 0.99 and x[0, 0, 0] < 0.01  # seeds honoured
    # the bright half (where the foreground seed is) ends up more foreground than the dark half
    assert x[:, :, 4:].mean() > x[:, :, :4].mean()
