"""Model cards: what a model was trained on, for what, and whether an input is outside that.

A card is read from ``<config stem>.card.yml`` next to a model config (bundled models:
``configs/models/``), with these keys (all optional)::

    demo: true                      # for demonstration only: never for patients
    training_data: "..."            # one or two sentences
    intended_use: "..."
    modality: CT                    # default: the config's ``modality``
    intensity_range: [-1010, 450]   # 1st..99th percentile range of the training images
    fov_mm: [[190, 240], [250, 300], [330, 400]]   # physical extent (z, y, x) seen in training
    details: phantom_ct_unet.md     # the full card (markdown) next to it

A model without a card file gets a card that says so (training data unknown). Importing
this module does not import torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from medseg.core.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ModelCard", "load_card", "card_for", "domain_warnings"]

#: how far outside the training ranges an input may lie before a warning (fraction of the range)
INTENSITY_MARGIN = 0.1
#: a field of view below half or above twice the training extent is out of domain
FOV_FACTOR = 2.0


@dataclass(frozen=True)
class ModelCard:
    """Training data, modality and intended use of a model, with the ranges it saw.

    Attributes
    ----------
    name : str
    modality : str
        ``"CT"``, ``"MR"`` or ``"any"``.
    demo : bool
        True for demonstration models (synthetic or toy training data): never for patients.
    training_data, intended_use : str
    intensity_range : (float, float) or None
        1st..99th percentile range of the training images (HU for CT).
    fov_mm : ((lo, hi), (lo, hi), (lo, hi)) or None
        Physical extent per axis ``(z, y, x)`` in mm of the training images.
    details : Path or None
        The full card (markdown), when there is one.
    has_weights : bool
        Whether the model's weights are there (a config alone cannot segment anything).
    """

    name: str
    modality: str = "CT"
    demo: bool = False
    training_data: str = "unknown: this model has no card"
    intended_use: str = "unknown: this model has no card"
    intensity_range: Optional[tuple[float, float]] = None
    fov_mm: Optional[tuple[tuple[float, float], ...]] = None
    details: Optional[Path] = None
    has_weights: bool = True

    def summary(self) -> str:
        """A few lines for a terminal or a widget."""
        lines = [f"model {self.name}: {'DEMONSTRATION ONLY - not for patients. ' if self.demo else ''}"
                 f"modality {self.modality}",
                 f"  trained on: {self.training_data}",
                 f"  intended use: {self.intended_use}"]
        if not self.has_weights:
            lines.append("  no weights: this model cannot segment until it is trained")
        if self.details is not None:
            lines.append(f"  full card: {self.details}")
        return "\n".join(lines)


def _pair(value: Any, what: str, path: Path) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {what} must be two numbers [low, high], got {value!r}") from exc
    if not lo < hi:
        raise ConfigError(f"{path}: {what} must be [low, high] with low < high, got {value!r}")
    return lo, hi


def load_card(path: str | Path, *, name: str, modality: str = "CT", has_weights: bool = True) -> ModelCard:
    """Read a ``*.card.yml`` file.

    Raises
    ------
    ConfigError
        If the file is not a mapping or a range is malformed.
    """
    import yaml

    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a model card must be a mapping of keys (demo, training_data, ...)")
    rng = data.get("intensity_range")
    fov = data.get("fov_mm")
    details = data.get("details")
    return ModelCard(
        name=name,
        modality=str(data.get("modality", modality)),
        demo=bool(data.get("demo", False)),
        training_data=str(data.get("training_data", ModelCard.training_data)).strip(),
        intended_use=str(data.get("intended_use", ModelCard.intended_use)).strip(),
        intensity_range=_pair(rng, "intensity_range", path) if rng is not None else None,
        fov_mm=tuple(_pair(v, "fov_mm", path) for v in fov) if fov is not None else None,
        details=(path.parent / details) if details else None,
        has_weights=has_weights,
    )


def card_for(model: Any = None) -> ModelCard:
    """The card of a model: a bundled name, a config path, a ``ModelConfig`` or a ``LoadedModel``.

    Looks for ``<config stem>.card.yml`` next to the model's config.
    """
    from medseg.models.loader import DEFAULT_MODEL, find_config

    cfg_path: Optional[Path] = None
    config = getattr(model, "config", None) if model is not None and not isinstance(model, (str, Path)) else None
    if config is None and hasattr(model, "network") and hasattr(model, "labels"):
        config = model
    if config is None:
        cfg_path = find_config(model if model is not None else DEFAULT_MODEL)
        if cfg_path.is_dir():
            cfg_path = next(iter(sorted(cfg_path.glob("*.yaml"))), cfg_path)
        from medseg.models.config import load_config

        config = load_config(cfg_path) if cfg_path.is_file() else None
    name = getattr(config, "name", str(model))
    modality = str(getattr(config, "modality", "CT"))
    if cfg_path is None:
        source = getattr(model, "source", None) or getattr(model, "path", None)
        try:
            cfg_path = Path(source) if source else find_config(name)
        except Exception:  # noqa: BLE001 - a model built in memory: no card on disk
            cfg_path = None
    weights = getattr(config, "weights", None)
    has_weights = True
    if cfg_path is not None and cfg_path.suffix in (".yaml", ".yml"):
        has_weights = bool(weights) and (cfg_path.parent / str(weights)).is_file()
    card_path = cfg_path.with_name(cfg_path.stem + ".card.yml") if cfg_path is not None else None
    if card_path is not None and card_path.is_file():
        return load_card(card_path, name=name, modality=modality, has_weights=has_weights)
    return ModelCard(name=name, modality=modality, has_weights=has_weights)


def domain_warnings(volume: Any, card: ModelCard, *, sample: int = 500_000) -> list[str]:
    """Why ``volume`` lies outside what the model saw: modality, intensities, field of view.

    Parameters
    ----------
    volume : Volume
        ``(Z, Y, X)`` image with ``meta["Modality"]`` when known.
    card : ModelCard
    sample : int
        About this many voxels (a regular subsample) are used for the intensity percentiles.

    Returns
    -------
    list of str
        One sentence per problem (empty: within the model's domain as far as the card tells).
    """
    out: list[str] = []
    if card.demo:
        out.append(f"{card.name} is a demonstration model ({card.training_data}); its output is not "
                   f"a segmentation of this patient")
    modality = str(volume.meta.get("Modality", "") or "").upper()
    if card.modality.upper() != "ANY":
        if not modality:
            out.append(f"the image's modality is unknown; {card.name} was trained on {card.modality} only")
        elif modality != card.modality.upper():
            out.append(f"the image is {modality}; {card.name} was trained on {card.modality} only")
    arr = volume.array
    if card.intensity_range is not None and arr.size:
        step = max(1, int(np.cbrt(arr.size / sample)))
        sub = np.asarray(arr[::step, ::step, ::step] if arr.ndim == 3 else arr, dtype=np.float32)
        p1, p99 = (float(v) for v in np.percentile(sub, [1, 99]))
        lo, hi = card.intensity_range
        margin = INTENSITY_MARGIN * (hi - lo)
        if p1 < lo - margin or p99 > hi + margin:
            out.append(f"intensities (1st-99th percentile {p1:.0f} to {p99:.0f}) fall outside the training "
                       f"range {lo:.0f} to {hi:.0f}")
    if card.fov_mm is not None:
        extent = [n * s for n, s in zip(volume.shape[-3:], volume.spacing)]
        names = ("z", "y", "x")
        for ax, (e, (lo, hi)) in enumerate(zip(extent, card.fov_mm)):
            if e < lo / FOV_FACTOR or e > hi * FOV_FACTOR:
                out.append(f"field of view {names[ax]} {e:.0f} mm is far from the training images' "
                           f"{lo:.0f}-{hi:.0f} mm")
    return out
