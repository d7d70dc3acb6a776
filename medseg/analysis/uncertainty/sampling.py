"""Stochastic predictions: test-time augmentation (MONAI transforms), MC dropout, ensembles.

Everything here works with a *predictor*: any callable ``Volume → (C, Z, Y, X)`` probabilities
on the input grid (an ndarray or a Volume). :func:`medseg.inference.model_predictor` wraps a
medseg model; tests and other engines pass their own. This package never imports medseg's
models or inference: analysis receives predictors.
torch and MONAI are imported on use only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from medseg.core.errors import InputError
from medseg.core.labels import LabelTable
from medseg.core.progress import CancelCallback, ProgressCallback, check_cancel, report
from medseg.analysis.uncertainty.maps import SampleAccumulator, UncertaintyResult
from medseg.core.volume import Volume

__all__ = [
    "Predictor",
    "Augmentation",
    "DEFAULT_TTA",
    "tta_samples",
    "tta_uncertainty",
    "mc_dropout_uncertainty",
    "ensemble_uncertainty",
]

log = logging.getLogger(__name__)

Predictor = Callable[[Volume], Union[np.ndarray, Volume]]


@dataclass(frozen=True)
class Augmentation:
    """One test-time view of the image.

    Spatial parameters act in millimetres about the volume centre, in the (y, x) plane of the
    array (axial for axial scans), so they stay rigid rotations on anisotropic grids. They are
    inverted exactly on the predicted probabilities; intensity changes need no inverse.

    Attributes
    ----------
    name : str
    rotate_deg : float
        In-plane rotation angle in degrees.
    scale : float
        In-plane zoom factor (> 1 magnifies).
    intensity_scale : float
        Multiplies the image values (MONAI ``ScaleIntensity(factor=intensity_scale - 1)``).
    intensity_shift : float
        Added to the image values, in image units (HU for CT; MONAI ``ShiftIntensity``).
    noise_std : float
        Gaussian noise in image units (MONAI ``RandGaussianNoise``, seeded).
    """

    name: str
    rotate_deg: float = 0.0
    scale: float = 1.0
    intensity_scale: float = 1.0
    intensity_shift: float = 0.0
    noise_std: float = 0.0

    @property
    def spatial(self) -> bool:
        return self.rotate_deg != 0.0 or self.scale != 1.0


#: Eight views: identity, ±7° rotations, zoom in/out, contrast, brightness and noise.
DEFAULT_TTA: tuple[Augmentation, ...] = (
    Augmentation("identity"),
    Augmentation("rotate+7", rotate_deg=7.0),
    Augmentation("rotate-7", rotate_deg=-7.0),
    Augmentation("zoom1.08", scale=1.08),
    Augmentation("zoom0.93", scale=0.93),
    Augmentation("contrast+noise", intensity_scale=1.08, noise_std=15.0),
    Augmentation("shift-20", intensity_shift=-20.0),
    Augmentation("rotate+4_zoom1.04_noise", rotate_deg=4.0, scale=1.04, noise_std=10.0),
)


def _probabilities(out: Union[np.ndarray, Volume], volume: Volume, what: str) -> np.ndarray:
    arr = np.asarray(out.array if isinstance(out, Volume) else out, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1:] != volume.shape:
        raise InputError(f"{what} returned shape {arr.shape}; a predictor must return (C, Z, Y, X) "
                         f"probabilities on the input grid {volume.shape}")
    return arr


def _index_matrix(aug: Augmentation, spacing: Sequence[float]) -> np.ndarray:
    """4×4 matrix in voxel-index space (z, y, x) about the centre: output(x) = input(M x)."""
    t = math.radians(aug.rotate_deg)
    c, s = math.cos(t), math.sin(t)
    mm = np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]]) @ np.diag([1.0, 1.0 / aug.scale, 1.0 / aug.scale])
    d = np.diag(np.asarray(spacing, float))
    m = np.eye(4)
    m[:3, :3] = np.linalg.inv(d) @ mm @ d
    return m


def _augment_image(volume: Volume, aug: Augmentation, seed: int) -> tuple[Volume, Optional[np.ndarray]]:
    import torch
    from monai.transforms import Affine, RandGaussianNoise, ScaleIntensity, ShiftIntensity

    img = torch.as_tensor(np.asarray(volume.array, np.float32))
    if img.ndim == 3:
        img = img[None]
    m = None
    if aug.spatial:
        m = _index_matrix(aug, volume.spacing)
        img = Affine(affine=m, mode="bilinear", padding_mode="border", image_only=True)(img)
    if aug.intensity_scale != 1.0:
        img = ScaleIntensity(minv=None, maxv=None, factor=aug.intensity_scale - 1.0)(img)
    if aug.intensity_shift:
        img = ShiftIntensity(aug.intensity_shift)(img)
    if aug.noise_std > 0:
        noise = RandGaussianNoise(prob=1.0, mean=0.0, std=aug.noise_std)
        noise.set_random_state(seed)
        img = noise(img)
    arr = np.asarray(img, dtype=np.float32)
    if volume.array.ndim == 3:
        arr = arr[0]
    return volume.with_array(arr), m


def _invert(probabilities: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Warp probabilities back to the input grid; return them and the voxels they cover."""
    import torch
    from monai.transforms import Affine

    inv = Affine(affine=np.linalg.inv(m), mode="bilinear", padding_mode="zeros", image_only=True)
    p = torch.as_tensor(probabilities)
    ones = torch.ones((1,) + tuple(p.shape[1:]))
    back = np.asarray(inv(torch.cat([p, ones])), dtype=np.float32)
    cover = back[-1]
    valid = cover > 0.5
    p = back[:-1] / np.maximum(cover, 1e-6)
    return p, valid


def tta_samples(
    volume: Volume,
    predictor: Predictor,
    *,
    augmentations: Sequence[Augmentation] = DEFAULT_TTA,
    seed: int = 0,
    cancel: Optional[CancelCallback] = None,
) -> Iterator[tuple[np.ndarray, Optional[np.ndarray]]]:
    """Yield ``(probabilities, valid)`` for each augmented view, mapped back to the input grid."""
    for n, aug in enumerate(augmentations):
        check_cancel(cancel, "test-time augmentation")
        view, m = _augment_image(volume, aug, seed + n)
        p = _probabilities(predictor(view), volume, f"predictor (view {aug.name!r})")
        if m is None:
            yield p, None
        else:
            yield _invert(p, m)


def _labels_for(predictor: object, labels: Optional[LabelTable], channels: int) -> LabelTable:
    if labels is not None:
        return labels
    table = getattr(predictor, "labels", None)
    if isinstance(table, LabelTable):
        return table
    return LabelTable.from_names([f"label_{i}" for i in range(1, channels)])


def _run(samples: Iterator, volume: Volume, predictor: object, labels: Optional[LabelTable], method: str,
         total: int, progress: Optional[ProgressCallback]) -> UncertaintyResult:
    acc: Optional[SampleAccumulator] = None
    report(progress, 0, total, method)
    for n, (p, valid) in enumerate(samples):
        if acc is None:
            acc = SampleAccumulator(volume, p.shape[0])
        acc.add(p, valid)
        report(progress, n + 1, total, method)
    assert acc is not None  # total >= 1 is checked by the callers
    return acc.result(_labels_for(predictor, labels, acc.channels), method=method)


def tta_uncertainty(
    volume: Volume,
    predictor: Predictor,
    *,
    augmentations: Sequence[Augmentation] = DEFAULT_TTA,
    labels: Optional[LabelTable] = None,
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> UncertaintyResult:
    """Test-time augmentation: predict on each view, invert, and measure the spread.

    Parameters
    ----------
    volume : Volume
        The image, (Z, Y, X) or (C, Z, Y, X).
    predictor : callable
        ``Volume → (C, Z, Y, X)`` probabilities on the input grid (e.g. :func:`medseg.inference.model_predictor`).
    augmentations : sequence of Augmentation
        Default :data:`DEFAULT_TTA` (8 views, the first the identity).
    labels : LabelTable, optional
        C − 1 labels; default the predictor's ``labels`` attribute, else ``label_1``...
    seed : int
        Seeds the noise of the views.
    """
    if not augmentations:
        raise InputError("augmentations is empty; pass at least one (e.g. the identity)")
    return _run(tta_samples(volume, predictor, augmentations=augmentations, seed=seed, cancel=cancel),
                volume, predictor, labels, "tta", len(augmentations), progress)


def mc_dropout_uncertainty(
    volume: Volume,
    predictor: Predictor,
    *,
    samples: int = 8,
    labels: Optional[LabelTable] = None,
    seed: Optional[int] = 0,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> UncertaintyResult:
    """MC dropout: ``samples`` predictions with dropout active.

    ``predictor`` must be stochastic, e.g. ``medseg.inference.model_predictor(model, mc_dropout=True)``.
    ``seed`` seeds torch's generator for the run (restored afterwards); ``None`` leaves it.
    """
    if samples < 2:
        raise InputError(f"MC dropout needs samples >= 2, got {samples}")

    def gen() -> Iterator[tuple[np.ndarray, None]]:
        import torch

        state = torch.random.get_rng_state() if seed is not None else None
        if seed is not None:
            torch.manual_seed(seed)
        try:
            for _ in range(samples):
                check_cancel(cancel, "MC dropout")
                yield _probabilities(predictor(volume), volume, "predictor"), None
        finally:
            if state is not None:
                torch.random.set_rng_state(state)

    result = _run(gen(), volume, predictor, labels, "mc_dropout", samples, progress)
    if float(result.mutual_information.array.max()) == 0.0:
        log.warning("MC dropout samples are identical: the model has no active dropout "
                    "(set network.dropout in its config and retrain, or use TTA)")
    return result


def ensemble_uncertainty(
    volume: Volume,
    predictors: Sequence[Predictor],
    *,
    labels: Optional[LabelTable] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> UncertaintyResult:
    """Ensemble of models (e.g. checkpoints of several trainings): one sample per member."""
    if len(predictors) < 2:
        raise InputError(f"an ensemble needs at least 2 predictors, got {len(predictors)}")

    def gen() -> Iterator[tuple[np.ndarray, None]]:
        for n, pred in enumerate(predictors):
            check_cancel(cancel, "ensemble")
            yield _probabilities(pred(volume), volume, f"predictor {n}"), None

    return _run(gen(), volume, predictors[0], labels, "ensemble", len(predictors), progress)
