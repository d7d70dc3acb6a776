"""Pixel data of a planned series → one ``(Z, Y, X)`` array with the modality LUT applied.

Native little-endian pixels are read straight from disk at the offset found while scanning
the header (no second header parse); everything else (JPEG, JPEG-LS, JPEG 2000, RLE, big
endian, deflated) goes through pydicom and its pixel-data plugins (pylibjpeg, GDCM, pyjpegls),
decoded in a small thread pool (the decoders release the GIL). Native reads run in one thread:
with a pool they were measured 2x slower (GIL hand-offs on tiny reads).

Output dtype (the rule :func:`medseg.io.dicom.read_dicom` documents):

* no rescale anywhere (slope 1, intercept 0): the stored dtype (e.g. uint16 MR, int16 CT);
* integer slopes and intercepts: ``int16`` when every rescaled value fits, else ``int32``
  (CT in HU is int16: exact, half the memory of float32);
* otherwise ``float32``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np

from medseg.core.errors import DicomError
from medseg.io.dicom._geometry import StackPlan
from medseg.io.dicom._headers import FileRecord, ImageRecord
from medseg.core.progress import StepProgress

__all__ = ["read_pixels", "DECODER_FIX"]

DECODER_FIX = ("install the pixel-data plugins: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg "
               "pylibjpeg-rle pyjpegls python-gdcm")
_WORKERS = max(1, min(4, (os.cpu_count() or 1)))


def _stored_dtype(rec: FileRecord) -> np.dtype:
    kind = "i" if rec.signed else "u"
    return np.dtype(f"<{kind}{rec.bits_allocated // 8}")


def _fix_bits(arr: np.ndarray, rec: FileRecord) -> None:
    """In place: drop bits above BitsStored (overlays) and sign-extend signed values."""
    extra = rec.bits_allocated - rec.bits_stored
    if extra <= 0 or rec.bits_stored <= 0:
        return
    if rec.signed:
        np.left_shift(arr, extra, out=arr)
        np.right_shift(arr, extra, out=arr)
    else:
        np.bitwise_and(arr, (1 << rec.bits_stored) - 1, out=arr)


def _decode(rec: FileRecord, frames: Sequence[Optional[int]]) -> tuple[list[np.ndarray], bool]:
    """Decode frames with pydicom; returns (arrays, modality LUT already applied)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(rec.path, force=True)
        arr = ds.pixel_array
    except (MemoryError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # decoders raise many types; Rust decoders (pylibjpeg-rle) panic with a
        # BaseException (pyo3's PanicException) on corrupt data: found by fuzzing
        from pydicom.uid import UID

        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DicomError(rec.path, f"cannot decode the pixel data ({UID(rec.transfer_syntax).name}): "
                         f"{type(exc).__name__}: {text[:200]}", DECODER_FIX + "; or the file is corrupt") from exc
    if rec.frames > 1 and arr.ndim == 2:
        arr = arr[None]
    lut = rec.modality_lut
    out = []
    for f in frames:
        a = arr[f] if f is not None and rec.frames > 1 else arr
        if a.shape != (rec.rows, rec.columns):
            raise DicomError(rec.path, f"decoded frame has shape {a.shape}, the header says "
                             f"({rec.rows}, {rec.columns})", "the file is corrupt; re-export it")
        out.append(apply_modality_lut(a, ds) if lut else a)
    return out, lut


def _read_file(rec: FileRecord, targets: list[tuple[int, Optional[int]]], raw: np.ndarray) -> dict[int, np.ndarray]:
    """Fill ``raw[idx]`` for each (idx, frame) of one file; return slices that did not fit raw's dtype."""
    spill: dict[int, np.ndarray] = {}
    if rec.fast and _stored_dtype(rec) == raw.dtype:
        frame_bytes = rec.rows * rec.columns * raw.dtype.itemsize
        try:
            with open(rec.path, "rb") as fp:
                for idx, frame in targets:
                    fp.seek(rec.pixel_offset + (frame or 0) * frame_bytes)  # type: ignore[operator]
                    got = fp.readinto(memoryview(raw[idx]).cast("B"))
                    if got != frame_bytes:
                        raise DicomError(rec.path, f"truncated: frame {frame or 0} has {got} of {frame_bytes} bytes",
                                         "the file was cut short; copy it again from the source")
                    _fix_bits(raw[idx], rec)
        except OSError as exc:
            raise DicomError(rec.path, f"cannot read ({exc})", "check the file and its permissions") from exc
        return spill
    arrays, lut = _decode(rec, [f for _, f in targets])
    for (idx, _), a in zip(targets, arrays):
        if lut or not np.can_cast(a.dtype, raw.dtype, "safe"):
            spill[idx] = a
        else:
            raw[idx] = a
    return spill


def read_pixels(plan: StackPlan, *, progress=None, cancel=None) -> np.ndarray:
    """Read, rescale and (where the plan says so) interpolate the series' slices.

    Returns
    -------
    (Z, Y, X) ndarray
        Modality values (HU for CT); dtype by the rule in this module's docstring.
    """
    images: list[ImageRecord] = plan.images
    first = images[0].file
    rows, cols = first.rows, first.columns
    raw_dtype = _stored_dtype(first) if first.bits_allocated in (8, 16, 32) else np.dtype(np.float64)
    raw = np.empty((len(images), rows, cols), dtype=raw_dtype)
    by_file: dict[str, tuple[FileRecord, list[tuple[int, Optional[int]]]]] = {}
    for i, im in enumerate(images):
        by_file.setdefault(im.file.path, (im.file, []))[1].append((i, im.frame))
    steps = StepProgress(len(by_file), "reading DICOM pixels", progress=progress, cancel=cancel)
    spill: dict[int, np.ndarray] = {}
    # native pixels: plain reads into the output buffer, fastest in one thread (measured);
    # compressed pixels: decoders release the GIL, so decode in a small pool
    direct = [job for job in by_file.values() if job[0].fast and _stored_dtype(job[0]) == raw_dtype]
    jobs = [job for job in by_file.values() if not (job[0].fast and _stored_dtype(job[0]) == raw_dtype)]
    for rec, targets in direct:
        spill.update(_read_file(rec, targets, raw))
        steps.step()
    if len(jobs) <= 1 or _WORKERS == 1:
        for rec, targets in jobs:
            spill.update(_read_file(rec, targets, raw))
            steps.step()
    else:
        with ThreadPoolExecutor(_WORKERS) as pool:
            futures = [pool.submit(_read_file, rec, targets, raw) for rec, targets in jobs]
            try:
                for fut in futures:
                    spill.update(fut.result())
                    steps.step()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    return _rescale(raw, spill, images, plan)


def _rescale(raw: np.ndarray, spill: dict[int, np.ndarray], images: list[ImageRecord], plan: StackPlan) -> np.ndarray:
    slopes = np.array([1.0 if i in spill and images[i].file.modality_lut else im.slope for i, im in enumerate(images)])
    inter = np.array([0.0 if i in spill and images[i].file.modality_lut else im.intercept for i, im in enumerate(images)])
    identity = bool(np.all(slopes == 1) and np.all(inter == 0))
    integral = bool(np.all(slopes == np.round(slopes)) and np.all(inter == np.round(inter)))
    spill_float = any(np.issubdtype(a.dtype, np.floating) for a in spill.values())
    if spill_float:
        out_dtype = np.dtype(np.float32)
    elif identity and not spill:
        out_dtype = raw.dtype
    elif integral:
        lo = np.array([float(spill[i].min()) if i in spill else 0.0 for i in range(len(images))])
        hi = np.array([float(spill[i].max()) if i in spill else 0.0 for i in range(len(images))])
        if len(spill) < len(images):
            rmin = raw.min(axis=(1, 2)).astype(float)
            rmax = raw.max(axis=(1, 2)).astype(float)
            keep = np.array([i not in spill for i in range(len(images))])
            lo[keep], hi[keep] = rmin[keep], rmax[keep]
        ends = np.concatenate([lo * slopes + inter, hi * slopes + inter])
        info16 = np.iinfo(np.int16)
        if identity and raw.dtype.kind in "iu" and ends.min() >= np.iinfo(raw.dtype).min and ends.max() <= np.iinfo(raw.dtype).max:
            out_dtype = raw.dtype
        elif ends.min() >= info16.min and ends.max() <= info16.max:
            out_dtype = np.dtype(np.int16)
        else:
            out_dtype = np.dtype(np.int32)
    else:
        out_dtype = np.dtype(np.float32)

    def slice_values(i: int) -> np.ndarray:
        src = spill[i] if i in spill else raw[i]
        if slopes[i] == 1 and inter[i] == 0:
            return src
        work = np.int32 if out_dtype.kind == "i" else np.float32
        v = src.astype(work)
        if slopes[i] != 1:
            v *= work(slopes[i])
        if inter[i] != 0:
            v += work(inter[i])
        return v

    if out_dtype == raw.dtype and not spill and not plan.irregular:
        if identity:
            return raw
        info = np.iinfo(out_dtype) if out_dtype.kind in "iu" else None
        if info is not None and slopes.min() == slopes.max() == 1 and info.min <= inter.min() and inter.max() <= info.max:
            # common CT case (slope 1, integer intercept, result fits the stored dtype): in place
            for i in range(len(images)):
                if inter[i] != 0:
                    raw[i] += out_dtype.type(inter[i])
            return raw
    out = np.empty(plan.shape, dtype=out_dtype)
    for z, srcs in enumerate(plan.sources):
        if len(srcs) == 1:
            out[z] = slice_values(srcs[0][0])
        else:
            acc = np.zeros(plan.shape[1:], dtype=np.float64)
            for i, w in srcs:
                acc += w * slice_values(i)
            out[z] = np.rint(acc) if out_dtype.kind in "iu" else acc
    return out
