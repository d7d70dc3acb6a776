"""Fixed-seed fuzzing budget for CI (issue 18): at least 2,000 mutated inputs through medseg's readers
and commands; every outcome is success or a named error, nothing is written outside the output
folder, inputs stay byte-identical, and hostile headers never allocate past the volume limit.

``benchmarks/fuzz.py --minutes N`` runs the same engine for longer and prints the figures.
"""

from __future__ import annotations

import resource

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from .fuzzing import FUZZ_LIMIT_BYTES, KINDS, Fuzzer  # noqa: E402

BUDGET = 2100  # inputs tried in CI (fixed seed: hypothesis derandomized, no example database)


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory, real_data):
    return Fuzzer(tmp_path_factory.mktemp("fuzz"), real_data, heavy_share=0.01)


def test_fuzz_budget(fuzzer):
    kinds = fuzzer.kinds()
    assert set(kinds) == set(KINDS)
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @settings(max_examples=BUDGET, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
    @given(kind=st.sampled_from(kinds), seed=st.integers(0, 2**31 - 1))
    def one(kind, seed):
        outcome = fuzzer.run_one(kind, seed)
        assert outcome.good, outcome

    one()
    stats = fuzzer.stats
    print(f"fuzz: {stats.tried} inputs, {stats.ok} ok, {stats.named} named errors, {len(stats.failures)} failures; "
          f"by target {stats.by_target}")
    assert stats.tried >= 2000 and not stats.failures
    assert stats.named > 0 and stats.ok > 0  # both outcomes are exercised
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kb) / 1024
    assert grown_mb < 8 * FUZZ_LIMIT_BYTES / 1024**2, f"peak RSS grew by {grown_mb:.0f} MB"
