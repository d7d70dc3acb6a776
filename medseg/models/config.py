"""Model configurations: YAML data validated into frozen dataclasses.

A model config is pure data (``yaml.safe_load`` + :func:`medseg.core.config.from_mapping`): the
network is chosen by name from a whitelist (:mod:`medseg.models.registry`), never by an
import path. Unknown keys raise :class:`~medseg.core.errors.ConfigError` naming the file and the key
path. Per-axis values follow medseg's array order ``(z, y, x)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from medseg.core.config import from_mapping, load_yaml
from medseg.core.errors import ConfigError
from medseg.core.labels import LabelTable

__all__ = [
    "slice_dim",
    "NetworkConfig",
    "IntensityConfig",
    "PreprocessingConfig",
    "InferenceConfig",
    "PostprocessingConfig",
    "ModelConfig",
    "load_config",
    "config_from_mapping",
    "config_to_mapping",
    "model_axes",
    "monai_pixdim",
    "NETWORK_NAMES",
]

NETWORK_NAMES = ("unet", "dynunet", "segresnet", "swinunetr", "deeplab", "fcn")
NetworkName = Literal["unet", "dynunet", "segresnet", "swinunetr", "deeplab", "fcn"]


#: Structural limits of :class:`NetworkConfig` (see ``NetworkConfig._check_structure``).
MAX_RES_UNITS = 16
MAX_LEVELS = 12
MAX_FEATURE_SIZE = 96  # SwinUNETR cannot be built on the meta device: its size is bounded here


@dataclass(frozen=True)
class NetworkConfig:
    """Which network, and its size.

    Parameters
    ----------
    name : {"unet", "dynunet", "segresnet", "swinunetr", "deeplab", "fcn"}
        ``deeplab`` is a dilated encoder with an ASPP head (DeepLab-style context); ``fcn`` a
        plain fully convolutional encoder/decoder.
    spatial_dims : {2, 3}
        2 = slice-wise model (see :attr:`InferenceConfig.slice_axis`).
    channels : tuple of int
        Feature maps per level (``unet``/``dynunet``/``fcn``/``deeplab``; the first entry is
        SegResNet's ``init_filters``).
    strides : tuple of int
        Downsampling factor between levels, ``len(channels) - 1`` entries (UNet/DynUNet/FCN).
    num_res_units : int
        Residual units per UNet block (0 to 16).
    dropout : float
        Dropout probability in [0, 1); > 0 makes MC dropout possible.
    feature_size : int
        SwinUNETR embedding size (a multiple of 12, at most 96).
    dilations : tuple of int
        ASPP dilation rates (``deeplab``).
    """

    name: NetworkName
    spatial_dims: Literal[2, 3] = 3
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    dropout: float = 0.0
    feature_size: int = 24
    dilations: tuple[int, ...] = (1, 2, 4, 6)

    def __post_init__(self) -> None:
        self._check_structure()
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"network.dropout must be in [0, 1), got {self.dropout}")
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ConfigError(f"network.channels must be positive integers, got {list(self.channels)}")
        if any(int(st) < 1 for st in self.strides):
            raise ConfigError(f"network.strides must be positive integers, got {list(self.strides)}")
        if self.name in ("unet", "dynunet", "fcn") and len(self.strides) != len(self.channels) - 1:
            raise ConfigError(
                f"network.strides needs len(channels) - 1 = {len(self.channels) - 1} entries, "
                f"got {len(self.strides)}"
            )
        if self.name == "swinunetr" and (self.feature_size % 12 or self.spatial_dims != 3):
            raise ConfigError(
                f"network.feature_size must be a multiple of 12 and spatial_dims 3 for swinunetr, "
                f"got feature_size {self.feature_size}, spatial_dims {self.spatial_dims}"
            )

    def _check_structure(self) -> None:
        """Bounds on what decides how many modules the constructor builds.

        The parameter-memory check (:func:`medseg.models.registry.build_network`) bounds the
        weights, but it has to run the constructor to count them: a config asking for 10^308
        residual units or thousands of levels would fill the memory in that very build (found by
        the fuzzer). Real segmentation networks stay far inside these limits.
        """
        limits = (("num_res_units", self.num_res_units, 0, MAX_RES_UNITS),
                  ("feature_size", self.feature_size, 1, MAX_FEATURE_SIZE))
        for name, value, lo, hi in limits:
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ConfigError(f"network.{name} must be an integer in [{lo}, {hi}], got {value!r}")
        for name, seq in (("channels", self.channels), ("strides", self.strides), ("dilations", self.dilations)):
            if len(seq) > MAX_LEVELS:
                raise ConfigError(f"network.{name} has {len(seq)} entries; medseg builds at most {MAX_LEVELS}")

    @property
    def downsampling(self) -> int:
        """Total downsampling factor: patch sizes must be multiples of it."""
        if self.name == "swinunetr":
            return 32
        if self.name == "segresnet":
            return 8
        if self.name == "deeplab":
            return 4
        out = 1
        for s in self.strides:
            out *= s
        return out


@dataclass(frozen=True)
class IntensityConfig:
    """Intensity normalisation applied after resampling.

    ``ct_window``: clip HU to ``window`` and scale to [0, 1]. ``mr_percentile``: scale the
    ``percentiles`` of the volume to [0, 1] (clipped). ``mr_zscore``: zero mean, unit variance
    over non-zero voxels. ``none``: as is.
    """

    kind: Literal["ct_window", "mr_percentile", "mr_zscore", "none"] = "ct_window"
    window: tuple[float, float] = (-160.0, 240.0)
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.window[0] >= self.window[1]:
            raise ConfigError(f"preprocessing.intensity.window must be (low, high) with low < high, got {list(self.window)}")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(f"preprocessing.intensity.percentiles must satisfy 0 <= low < high <= 100, got {[lo, hi]}")


@dataclass(frozen=True)
class PreprocessingConfig:
    """Model grid and intensity.

    Parameters
    ----------
    target_spacing : (3,) floats
        Model grid spacing in mm, array order ``(z, y, x)``; 0 keeps the input's spacing on
        that axis.
    orientation : str
        Three-letter MONAI (RAS-style) axis code of the model grid, e.g. ``"RAS"``.
    intensity : IntensityConfig
    axis_aligned : bool
        Resample oblique inputs onto a grid aligned with the patient axes (MONAI
        ``Spacing(diagonal=True)``) so the network sees an upright body; the box then grows
        beyond the scanned field of view, filled by edge replication. False (default) keeps
        the input's rotation on the model grid.
    """

    target_spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    orientation: str = "RAS"
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    axis_aligned: bool = False

    def __post_init__(self) -> None:
        if any(s < 0 for s in self.target_spacing):
            raise ConfigError(f"preprocessing.target_spacing must be >= 0 mm (0 = keep), got {list(self.target_spacing)}")
        code = self.orientation.upper()
        if len(code) != 3 or sorted(code.replace("L", "R").replace("P", "A").replace("I", "S")) != ["A", "R", "S"]:
            raise ConfigError(f"preprocessing.orientation must be a 3-letter code like 'RAS', got {self.orientation!r}")


def monai_pixdim(config: PreprocessingConfig) -> tuple[float, float, float]:
    """Target spacing in MONAI's ``(i, j, k)`` order, for the axes *after* reorientation.

    ``target_spacing`` is ``(z, y, x)``: S/I gets z, A/P gets y, R/L gets x.
    """
    sz, sy, sx = config.target_spacing
    by = {"R": sx, "L": sx, "A": sy, "P": sy, "S": sz, "I": sz}
    return tuple(float(by[c]) for c in config.orientation.upper())  # type: ignore[return-value]


def model_axes(config: PreprocessingConfig) -> tuple[int, int, int]:
    """For each model-grid tensor axis, the medseg array axis (0=z, 1=y, 2=x) it corresponds to."""
    by = {"R": 2, "L": 2, "A": 1, "P": 1, "S": 0, "I": 0}
    return tuple(by[c] for c in config.orientation.upper())  # type: ignore[return-value]


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window settings.

    Parameters
    ----------
    patch_size : (3,) ints
        Window size on the model grid, array order ``(z, y, x)``; for 2D models the entry of
        the slice axis is ignored (1).
    overlap : float
        Fraction of overlap between windows, in [0, 1).
    blending : {"gaussian", "constant"}
    sw_batch_size : int
    slice_axis : {"axial", "coronal", "sagittal"}
        Plane of 2D models.
    """

    patch_size: tuple[int, int, int] = (64, 96, 96)
    overlap: float = 0.25
    blending: Literal["gaussian", "constant"] = "gaussian"
    sw_batch_size: int = 2
    slice_axis: Literal["axial", "coronal", "sagittal"] = "axial"

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"inference.overlap must be in [0, 1), got {self.overlap}")
        if any(p <= 0 for p in self.patch_size):
            raise ConfigError(f"inference.patch_size must be positive, got {list(self.patch_size)}")
        if self.sw_batch_size < 1:
            raise ConfigError(f"inference.sw_batch_size must be >= 1, got {self.sw_batch_size}")


@dataclass(frozen=True)
class PostprocessingConfig:
    """Per-label clean-up, applied on the input grid after the argmax."""

    largest_component: bool = False
    fill_holes: bool = False
    min_size_ml: float = 0.0


@dataclass(frozen=True)
class ModelConfig:
    """A segmentation model: network, labels, preprocessing, inference, postprocessing.

    ``labels`` maps label index (1..N, contiguous; channel ``c`` of the network is label
    ``c``, channel 0 background) to a name. ``postprocessing`` is keyed by label name.
    ``weights`` is a checkpoint path relative to the YAML file (``.safetensors`` preferred).
    """

    name: str
    network: NetworkConfig
    labels: dict[int, str]
    description: str = ""
    modality: Literal["CT", "MR", "any"] = "CT"
    in_channels: int = 1
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    postprocessing: dict[str, PostprocessingConfig] = field(default_factory=dict)
    weights: Optional[str] = None

    def __post_init__(self) -> None:
        keys = sorted(self.labels)
        if keys != list(range(1, len(keys) + 1)):
            raise ConfigError(f"labels must be indexed 1..N without gaps (channel c = label c), got {keys}")
        unknown = [n for n in self.postprocessing if n not in self.labels.values()]
        if unknown:
            raise ConfigError(f"postprocessing names unknown label {unknown[0]!r}; labels are {sorted(self.labels.values())}")
        if self.in_channels < 1:
            raise ConfigError(f"in_channels must be >= 1, got {self.in_channels}")
        ds = self.network.downsampling
        patch = self._network_patch()
        bad = [p for p in patch if p % ds]
        if bad:
            raise ConfigError(
                f"inference.patch_size {list(self.inference.patch_size)} must be multiples of the network's "
                f"downsampling factor {ds} on each model axis"
            )

    @property
    def out_channels(self) -> int:
        """Network output channels: background + one per label."""
        return len(self.labels) + 1

    @property
    def label_table(self) -> LabelTable:
        return LabelTable.from_names(self.labels)

    def _network_patch(self) -> tuple[int, ...]:
        """Patch in array order, dropping the slice axis for 2D models."""
        p = tuple(self.inference.patch_size)
        if self.network.spatial_dims == 2:
            drop = {"axial": 0, "coronal": 1, "sagittal": 2}[self.inference.slice_axis]
            return tuple(v for i, v in enumerate(p) if i != drop)
        return p


#: array axis (0=z, 1=y, 2=x) of the slices of a 2D model
SLICE_ARRAY_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}


def slice_dim(config: ModelConfig) -> Optional[int]:
    """Model-grid axis a 2D model slides along (its slices' normal); None for a 3D model."""
    if config.network.spatial_dims != 2:
        return None
    return model_axes(config.preprocessing).index(SLICE_ARRAY_AXIS[config.inference.slice_axis])


def config_from_mapping(data: Any, *, source: str = "<config>") -> ModelConfig:
    """Validate a parsed mapping into a :class:`ModelConfig` (errors name ``source``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a model config must be a mapping, got {type(data).__name__}")
    labels = data.get("labels")
    if isinstance(labels, Mapping) and any(isinstance(k, str) and k.isdigit() for k in labels):
        data = {**data, "labels": {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in labels.items()}}
    try:
        return from_mapping(ModelConfig, data, source=source)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(source) else f"{source}: {msg}") from exc


def load_config(path: str | Path) -> ModelConfig:
    """Read and validate a model YAML file."""
    p = Path(path)
    return config_from_mapping(load_yaml(p), source=str(p))


def config_to_mapping(config: ModelConfig) -> dict:
    """Plain-data form (lists, dicts, numbers) that :func:`config_from_mapping` reads back."""
    import dataclasses

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        return v

    return conv(config)
