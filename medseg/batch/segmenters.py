"""Segmenters for batch runs: a picklable spec that builds ``segment(volume) -> Segmentation``.

Workers build the segmenter once (loading the model once) from a :class:`SegmenterSpec` and
reuse it for every series they process. ``"threshold"`` is a deterministic CT segmenter with
no learned weights (Hounsfield thresholds and connected components): useful for tests, for
checking a pipeline end to end, and as a body/bone mask. Any other name is passed to
:func:`medseg.models.load_model` (``None`` = the bundled default model).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from medseg.core.labels import ANATOMY, Code, Label, LabelTable
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume

__all__ = ["SegmenterSpec", "Segmenter", "threshold_segment", "THRESHOLD_LABELS"]

log = logging.getLogger(__name__)

Segmenter = Callable[[Volume], Segmentation]

THRESHOLD_LABELS = LabelTable((
    Label(1, "body", (177, 122, 101), Code("38266002", "SCT", "Entire body as a whole"), ANATOMY),
    Label(2, "bone", (241, 214, 145), Code("272673000", "SCT", "Bone structure"), ANATOMY),
))


def threshold_segment(
    volume: Volume,
    *,
    body_hu: float = -300.0,
    bone_hu: float = 250.0,
    min_bone_voxels: int = 20,
) -> Segmentation:
    """Body and bone of a CT by Hounsfield thresholds and connected components.

    Parameters
    ----------
    volume : Volume
        (Z, Y, X) CT in HU.
    body_hu : float
        Voxels above it belong to the body candidate; the largest 26-connected component is
        kept and its holes are filled slice by slice (array axis z).
    bone_hu : float
        Body voxels at or above it are bone; bone components smaller than
        ``min_bone_voxels`` are dropped.

    Returns
    -------
    Segmentation
        uint8 label map with :data:`THRESHOLD_LABELS` (1 body, 2 bone) on the input grid.
    """
    from scipy import ndimage

    arr = np.asarray(volume.array if volume.array.ndim == 3 else volume.array[0])
    full = ndimage.generate_binary_structure(3, 3)
    cand = arr > body_hu
    comp, n = ndimage.label(cand, structure=full)
    body = np.zeros(arr.shape, dtype=bool)
    if n:
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        body = comp == int(np.argmax(sizes))
        for k in range(body.shape[0]):
            body[k] = ndimage.binary_fill_holes(body[k])
    bone = body & (arr >= bone_hu)
    comp, n = ndimage.label(bone, structure=full)
    if n:
        sizes = np.bincount(comp.ravel())
        keep = sizes >= min_bone_voxels
        keep[0] = False
        bone = keep[comp]
    label = np.zeros(arr.shape, dtype=np.uint8)
    label[body] = 1
    label[bone] = 2
    return Segmentation(Volume(label, volume.affine, {"model": "threshold"}), THRESHOLD_LABELS)


@dataclass(frozen=True)
class SegmenterSpec:
    """How a worker builds its segmenter (picklable: sent to processes and Dask workers).

    Attributes
    ----------
    model : str or None
        ``"threshold"``, a model name or path for :func:`medseg.models.load_model`, or None
        for the bundled default model.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"`` (learned models only).
    threads : int or None
        torch intra-op threads per worker (learned models only); None leaves torch's default.
    """

    model: Optional[str] = None
    device: str = "auto"
    threads: Optional[int] = None

    @property
    def name(self) -> str:
        return self.model or "default"

    @property
    def uses_gpu(self) -> bool:
        """True when the work needs a GPU (declared as a Dask resource)."""
        if self.model == "threshold":
            return False
        if self.device == "cuda":
            return True
        return False

    def build(self) -> Segmenter:
        """Load the model (once) and return ``segment(volume) -> Segmentation``."""
        if self.model == "threshold":
            return threshold_segment
        from medseg.inference import segment  # lazy: torch only in workers that need it
        from medseg.models import load_model

        if self.threads:
            import torch

            torch.set_num_threads(int(self.threads))
        loaded = load_model(self.model, device=self.device)
        device = self.device

        def run(volume: Volume) -> Segmentation:
            return segment(volume, model=loaded, device=device)

        log.info("loaded model %s for batch segmentation", self.name)
        return run
