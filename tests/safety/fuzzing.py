"""Mutation fuzzing of medseg's inputs (issue 18): the engine behind tests/safety/test_fuzz.py and
``benchmarks/fuzz.py``.

Seeds are real files: CT slices of ``../shared/data/real/ct_dicom_series`` (JPEG 2000 as stored and
decompressed), pydicom's test files, small NIfTI/NRRD/MHA volumes, label tables, a tiny model YAML
and a MONAI bundle config. Each input is one seeded mutation (header fields set to hostile values,
bytes flipped, files truncated or grown, JSON/YAML values replaced) fed to one target: the readers,
``medseg info``, ``convert``, ``segment`` (a tiny untrained model), ``export`` or ``batch``.

Oracle, per input:

* the outcome is success or one of medseg's named errors (CLI exit 0 or 1); an unexpected
  exception (CLI exit 70, or a non-medseg exception from an API call) is a crash;
* nothing is written outside the input's output folder, and the inputs are byte-identical after;
* memory: every run is under a small volume limit (:mod:`medseg.io.limits`); a MemoryError that
  is not the named ResourceLimitError is a failure, and the caller watches peak RSS.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import random
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

KINDS = ("dicom", "dicom_series", "nifti", "nrrd", "mha", "labels_json", "model_yaml", "bundle")
#: per-input volume limit: hostile headers are refused long before they could matter
FUZZ_LIMIT_BYTES = 64 * 1024**2

_INTERESTING_INTS = [0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 255, 256, 4095, 32767, 32768,
                     65534, 65535, 2**31 - 1, -1, -32768]
_INTERESTING_TEXT = ["", " ", "0", "-0", "1e308", "-1e308", "nan", "inf", "-inf", "1\\2", "1\\2\\3\\4\\5\\6\\7",
                     "0\\0\\0\\0\\0\\0", "1\\0\\0\\0\\0\\0", "abc", "=cmd|' /C calc'!A0", "\x00\x01\xff",
                     "9" * 64, "1.2.3", "-5", "0.0\\0.0"]
_DICOM_TAGS = ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
               "NumberOfFrames", "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
               "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope",
               "RescaleIntercept", "SliceThickness", "SpacingBetweenSlices", "SeriesInstanceUID", "SOPClassUID",
               "SOPInstanceUID", "Modality", "SeriesDescription", "GantryDetectorTilt", "ImagerPixelSpacing",
               "InstanceNumber", "FrameOfReferenceUID"]


@dataclass
class Outcome:
    kind: str
    target: str
    seed: int
    status: str  # "ok", "named" (a medseg error / exit 1), "crash", "stray_write", "input_changed", "memory"
    detail: str = ""

    @property
    def good(self) -> bool:
        return self.status in ("ok", "named")


@dataclass
class Stats:
    tried: int = 0
    ok: int = 0
    named: int = 0
    failures: list = field(default_factory=list)
    by_target: dict = field(default_factory=dict)

    def add(self, o: Outcome) -> None:
        self.tried += 1
        self.by_target[o.target] = self.by_target.get(o.target, 0) + 1
        if o.status == "ok":
            self.ok += 1
        elif o.status == "named":
            self.named += 1
        else:
            self.failures.append(o)


# -- seeds -----------------------------------------------------------------------------------------
def _tiny_model(folder: Path) -> Path:
    """An untrained tiny UNet saved as a medseg model (YAML + safetensors): segment runs in milliseconds."""
    import torch
    import yaml
    from monai.networks.nets import UNet

    from medseg.models.checkpoint import save_weights
    from medseg.samples.phantom import PHANTOM_LABELS

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=len(PHANTOM_LABELS) + 1, channels=(4, 8), strides=(2,),
               num_res_units=0)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(net, folder / "tiny.safetensors")
    cfg = {"name": "fuzz_tiny", "modality": "CT",
           "network": {"name": "unet", "spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0},
           "labels": {lab.index: lab.name for lab in PHANTOM_LABELS},
           "preprocessing": {"target_spacing": [8.0, 8.0, 8.0], "orientation": "SPL",
                             "intensity": {"kind": "ct_window", "window": [-160.0, 240.0]}},
           "inference": {"patch_size": [16, 16, 16], "overlap": 0.0, "blending": "constant", "sw_batch_size": 1},
           "weights": "tiny.safetensors"}
    (folder / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    return folder / "tiny.yaml"


def build_seeds(root: Path, real_data: Optional[Path]) -> dict:
    """Write every seed under ``root`` once; returns ``{kind: [paths]}`` plus ``"model"``."""
    import pydicom
    import SimpleITK as sitk
    from pydicom.data import get_testdata_file

    from medseg.io import write_segmentation, write_volume
    from medseg.samples.phantom import default_phantom_affine, make_phantom

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    seeds: dict = {k: [] for k in KINDS}
    dicom_dir = root / "dicom"
    dicom_dir.mkdir(exist_ok=True)
    if real_data is not None and (real_data / "ct_dicom_series").is_dir():
        slices = sorted((real_data / "ct_dicom_series").iterdir())[:3]
        for i, f in enumerate(slices):
            shutil.copy(f, dicom_dir / f"ct_j2k_{i}.dcm")
            seeds["dicom"].append(dicom_dir / f"ct_j2k_{i}.dcm")
        ds = pydicom.dcmread(slices[0])
        ds.decompress()
        ds.save_as(dicom_dir / "ct_native.dcm")
        seeds["dicom"].append(dicom_dir / "ct_native.dcm")
        series = root / "series"
        series.mkdir(exist_ok=True)
        for i, f in enumerate(slices):
            d = pydicom.dcmread(f)
            d.decompress()
            d.save_as(series / f"s{i}.dcm")
        seeds["dicom_series"].append(series)
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "emri_small.dcm",
                 "JPEG-LL.dcm", "SC_rgb_rle.dcm"):
        try:
            path = get_testdata_file(name)
        except Exception:  # pragma: no cover - pydicom-data absent
            path = None
        if path:
            shutil.copy(path, dicom_dir / name)
            seeds["dicom"].append(dicom_dir / name)
    shape = (8, 16, 16)
    image, seg = make_phantom(shape=shape, affine=default_phantom_affine(shape, (8.0, 8.0, 8.0)), seed=3)
    seeds["nifti"] += [write_volume(image, root / "img.nii.gz"), write_volume(image, root / "img.nii")]
    seeds["nrrd"].append(root / "img.nrrd")
    sitk.WriteImage(sitk.ReadImage(str(root / "img.nii.gz")), str(root / "img.nrrd"), useCompression=False)
    seeds["mha"].append(root / "img.mha")
    sitk.WriteImage(sitk.ReadImage(str(root / "img.nii.gz")), str(root / "img.mha"), useCompression=False)
    lab = write_segmentation(seg, root / "labels" / "seg.nii.gz")
    seeds["labels_json"].append(lab)
    seeds["model"] = _tiny_model(root / "model")
    seeds["model_yaml"].append(seeds["model"])
    seeds["bundle"].append(root / "bundle")
    _bundle_seed(root / "bundle", seeds["model"])
    seeds["image"] = root / "img.nii.gz"
    return seeds


def _bundle_seed(folder: Path, model_yaml: Path) -> None:
    from medseg.models import load_model
    from medseg.models.bundle import export_bundle

    export_bundle(load_model(model_yaml, device="cpu"), folder)
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    meta.pop("medseg_config", None)  # a foreign bundle: medseg maps its inference.json
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))


# -- mutators ---------------------------------------------------------------------------------------
def _flip_bytes(rng: random.Random, data: bytes, n: int = 0, start: int = 0) -> bytes:
    b = bytearray(data)
    if len(b) <= start:
        return bytes(b)
    for _ in range(n or rng.randint(1, 16)):
        i = rng.randrange(start, len(b))
        b[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    return bytes(b)


def _raw_mutation(rng: random.Random, data: bytes) -> bytes:
    op = rng.randrange(5)
    if op == 0:
        return data[: rng.randrange(0, max(1, len(data)))]  # truncated
    if op == 1:
        return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096)))  # grown
    if op == 2:
        i = rng.randrange(0, max(1, len(data)))
        return data[:i] + os.urandom(rng.randint(1, 64)) + data[i:]  # inserted garbage
    if op == 3:
        return _flip_bytes(rng, data, start=0 if rng.random() < 0.3 else min(len(data) - 1, 128))
    return _flip_bytes(rng, data[: min(len(data), 2048)]) + data[min(len(data), 2048):]  # header region only


def _dicom_value(rng: random.Random, tag: str):
    if tag in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
               "PlanarConfiguration"):
        return rng.choice(_INTERESTING_INTS) & 0xFFFF
    if tag in ("NumberOfFrames", "InstanceNumber"):
        return str(rng.choice(_INTERESTING_INTS))
    if tag in ("PhotometricInterpretation", "Modality"):
        return rng.choice(["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR", "", "XX", "CT", "SEG"])
    if tag in ("SOPClassUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        return rng.choice(["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.66.4",
                           "1.2.3", "", "not.a.uid", "1.2.840.10008.5.1.4.1.1.1"])
    return rng.choice(_INTERESTING_TEXT)


def mutate_dicom(rng: random.Random, data: bytes) -> bytes:
    """Set 1-3 header tags to hostile values (through pydicom), or mutate the bytes."""
    import pydicom
    from pydicom.dataelem import DataElement
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    if rng.random() < 0.35:
        return _raw_mutation(rng, data)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(_DICOM_TAGS)
            tag = tag_for_keyword(name)
            if rng.random() < 0.15 and name in ds:
                del ds[name]
                continue
            value = _dicom_value(rng, name)
            vr = dictionary_VR(tag)
            if vr == "US" and isinstance(value, str):
                value = 0
            raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
            if vr in ("US", "SS"):
                ds[tag] = DataElement(tag, vr, int(value))
            else:
                ds[tag] = DataElement(tag, vr, raw.decode("latin-1") if isinstance(raw, bytes) else raw)
        if rng.random() < 0.2 and "PixelData" in ds:
            px = bytes(ds.PixelData)
            ds.PixelData = px[: rng.randrange(0, max(1, len(px)))] if rng.random() < 0.5 else px + px[:1024]
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=False)
        return buf.getvalue()
    except Exception:  # pydicom could not even write it: mutate the bytes instead
        return _raw_mutation(rng, data)


_NIFTI_FIELDS = [(40, "h", 8), (70, "h", 1), (72, "h", 1), (76, "f", 8), (108, "f", 1), (112, "f", 2),
                 (252, "h", 2), (256, "f", 6), (280, "f", 12), (0, "i", 1)]


def mutate_nifti(rng: random.Random, data: bytes) -> bytes:
    gz = data[:2] == b"\x1f\x8b"
    raw = gzip.decompress(data) if gz else data
    if rng.random() < 0.25:
        raw = _raw_mutation(rng, raw)
    else:
        b = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            off, fmt, n = rng.choice(_NIFTI_FIELDS)
            k = rng.randrange(n)
            size = struct.calcsize(fmt)
            if fmt == "f":
                val = rng.choice([0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), 3.0, -2.5])
            else:
                val = rng.choice(_INTERESTING_INTS + [2**15 - 1, -(2**15)])
                val = max(-(2 ** (8 * size - 1)), min(2 ** (8 * size - 1) - 1, val))
            if off + (k + 1) * size <= len(b):
                struct.pack_into("<" + fmt, b, off + k * size, val)
        raw = bytes(b)
    return gzip.compress(raw, compresslevel=1) if gz and rng.random() < 0.9 else raw


_ITK_KEYS = {
    "nrrd": {"type": ["short", "double", "uchar", "block", "int64", "xx"], "dimension": ["0", "1", "2", "3", "4", "99"],
             "sizes": ["0 0 0", "16 16", "65535 65535 65535", "-1 16 8", "16 16 8 3", "1e9 1 1"],
             "encoding": ["raw", "gzip", "ascii", "hex", "bzip2", "zz"], "endian": ["big", "little", "middle"],
             "space directions": ["(0,0,0) (0,0,0) (0,0,0)", "(nan,0,0) (0,1,0) (0,0,1)", "none (1,0,0) (0,1,0)"],
             "space": ["left-posterior-superior", "bogus"], "kinds": ["domain domain domain", "RGB-color"],
             "space origin": ["(nan,nan,nan)", "(1e308,0,0)"]},
    "mha": {"ElementType": ["MET_SHORT", "MET_DOUBLE", "MET_UCHAR", "MET_NONE", "MET_XX"],
            "NDims": ["0", "1", "2", "3", "4", "99"],
            "DimSize": ["0 0 0", "16 16", "65535 65535 65535", "-1 16 8", "1e9 1 1"],
            "ElementSpacing": ["0 0 0", "nan 1 1", "-1 -1 -1", "1e308 1 1"],
            "TransformMatrix": ["0 0 0 0 0 0 0 0 0", "1 0 0 1 0 0 0 0 1", "nan 0 0 0 1 0 0 0 1"],
            "CompressedData": ["True", "False"], "ElementNumberOfChannels": ["0", "3", "65535"],
            "HeaderSize": ["-1", "0", "99999999"], "BinaryDataByteOrderMSB": ["True", "False"]},
}


def mutate_itk(rng: random.Random, data: bytes, fmt: str) -> bytes:
    sep = b"\n\n" if fmt == "nrrd" else b"ElementDataFile = LOCAL\n"
    head, found, body = data.partition(sep)
    if rng.random() < 0.25 or not found:
        return _raw_mutation(rng, data)
    lines = head.decode("latin-1").split("\n")
    keys = _ITK_KEYS[fmt]
    delim = ": " if fmt == "nrrd" else " = "
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(list(keys))
        value = rng.choice(keys[key])
        idx = [i for i, l in enumerate(lines) if l.split(delim)[0].strip() == key]
        if idx and rng.random() < 0.15:
            del lines[idx[0]]
        elif idx:
            lines[idx[0]] = f"{key}{delim}{value}"
        else:
            lines.insert(max(1, len(lines) - 1), f"{key}{delim}{value}")
    if rng.random() < 0.3:
        body = body[: rng.randrange(0, max(1, len(body)))]
    return "\n".join(lines).encode("latin-1") + found + body


def _mutate_tree(rng: random.Random, obj, depth: int = 0):
    """Replace a random value of a JSON/YAML tree by a hostile one."""
    hostile = [None, True, -1, 0, 2**63, 1e308, float("nan"), "", "=cmd|' /C calc'!A0", "$__import__('os')",
               "@ref", [], {}, [1, 2, 3], {"a": {"b": {"c": [1]}}}, "x" * 10000, "\x00", -1e-300, "1e3"]
    if isinstance(obj, dict) and obj and depth < 6:
        key = rng.choice(list(obj))
        r = rng.random()
        if r < 0.15:
            obj.pop(key)
        elif r < 0.25:
            obj[rng.choice(["extra", "_target_", "labels", "0", "-1", "99999"])] = rng.choice(hostile)
        elif r < 0.55 or not isinstance(obj[key], (dict, list)):
            obj[key] = rng.choice(hostile)
        else:
            _mutate_tree(rng, obj[key], depth + 1)
    elif isinstance(obj, list) and obj and depth < 6:
        i = rng.randrange(len(obj))
        if rng.random() < 0.5 or not isinstance(obj[i], (dict, list)):
            obj[i] = rng.choice(hostile)
        else:
            _mutate_tree(rng, obj[i], depth + 1)
    return obj


def mutate_json(rng: random.Random, data: bytes) -> bytes:
    if rng.random() < 0.2:
        return _raw_mutation(rng, data)
    tree = json.loads(data)
    for _ in range(rng.randint(1, 3)):
        tree = _mutate_tree(rng, tree)
    return json.dumps(tree, allow_nan=True).encode()


def mutate_yaml(rng: random.Random, data: bytes) -> bytes:
    import yaml

    r = rng.random()
    if r < 0.15:
        return _raw_mutation(rng, data)
    if r < 0.2:  # a small alias bomb: nested anchors
        return b"a: &a [1, 2, 3, 4, 5, 6, 7, 8]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b]\n"
    tree = yaml.safe_load(data)
    for _ in range(rng.randint(1, 3)):
        tree = _mutate_tree(rng, tree)
    return yaml.safe_dump(tree, allow_unicode=True).encode()


# -- the harness ------------------------------------------------------------------------------------
def _digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode() + p.read_bytes())
        return h.hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(root: Path) -> dict:
    out = {}
    for dirpath, _, files in os.walk(root):
        for n in files:
            p = Path(dirpath) / n
            try:
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
            except OSError:
                pass
    return out


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class Fuzzer:
    """Runs seeded mutations against medseg's entry points, in this process, under ``work``."""

    def __init__(self, work: Path, real_data: Optional[Path], *, heavy_share: float = 0.04) -> None:
        self.work = Path(work)
        self.seeds = build_seeds(self.work / "seeds", real_data)
        self.heavy_share = heavy_share
        self.stats = Stats()
        self._capture = _Capture()
        logging.getLogger("medseg.cli").addHandler(self._capture)
        if not logging.getLogger().handlers:
            logging.getLogger().addHandler(logging.NullHandler())  # main()'s basicConfig: no console output

    def kinds(self) -> list[str]:
        return [k for k in KINDS if self.seeds.get(k)]

    # one input
    def run_one(self, kind: str, seed: int) -> Outcome:
        from medseg.io.limits import max_volume_bytes_limit

        rng = random.Random(seed)
        case = self.work / "case"
        if case.exists():
            shutil.rmtree(case, ignore_errors=True)
        (case / "in").mkdir(parents=True)
        (case / "out").mkdir()
        target, inputs, call = self._prepare(kind, rng, case)
        before_inputs = {str(p): _digest(p) for p in inputs}
        before = _snapshot(case)
        old_cwd = os.getcwd()
        os.chdir(case / "out")
        try:
            with max_volume_bytes_limit(FUZZ_LIMIT_BYTES), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                status, detail = call()
        finally:
            os.chdir(old_cwd)
        if status in ("ok", "named"):
            after = _snapshot(case)
            stray = [p for p, v in after.items()
                     if before.get(p) != v and not p.startswith(str(case / "out") + os.sep)]
            if stray:
                status, detail = "stray_write", f"written outside the output folder: {stray[:3]}"
            elif any(_digest(Path(p)) != d for p, d in before_inputs.items() if Path(p).exists()):
                status, detail = "input_changed", "an input file changed"
        o = Outcome(kind, target, seed, status, detail)
        self.stats.add(o)
        return o

    def _write_input(self, kind: str, rng: random.Random, case: Path) -> Path:
        seeds = self.seeds[kind]
        src = Path(rng.choice(seeds))
        if kind == "dicom_series":
            dst = case / "in" / "series"
            shutil.copytree(src, dst)
            files = sorted(dst.iterdir())
            for f in rng.sample(files, rng.randint(1, len(files))):
                if rng.random() < 0.1:
                    f.unlink()  # a missing slice
                else:
                    f.write_bytes(mutate_dicom(rng, f.read_bytes()))
            return dst
        if kind == "dicom":
            dst = case / "in" / "dcm" / src.name
            dst.parent.mkdir()
            dst.write_bytes(mutate_dicom(rng, src.read_bytes()))
            return dst.parent
        if kind == "nifti":
            dst = case / "in" / src.name
            dst.write_bytes(mutate_nifti(rng, src.read_bytes()))
            return dst
        if kind in ("nrrd", "mha"):
            dst = case / "in" / src.name
            dst.write_bytes(mutate_itk(rng, src.read_bytes(), kind))
            return dst
        if kind == "labels_json":
            dst = case / "in" / "seg.nii.gz"
            shutil.copy(src, dst)
            side = src.with_name("seg.labels.json")
            (case / "in" / "seg.labels.json").write_bytes(mutate_json(rng, side.read_bytes()))
            return dst
        if kind == "model_yaml":
            dst = case / "in" / "model"
            shutil.copytree(src.parent, dst)
            (dst / "tiny.yaml").write_bytes(mutate_yaml(rng, src.read_bytes()))
            return dst / "tiny.yaml"
        if kind == "bundle":
            dst = case / "in" / "bundle"
            shutil.copytree(src, dst)
            cfg = dst / "configs" / "inference.json"
            cfg.write_bytes(mutate_json(rng, cfg.read_bytes()))
            if rng.random() < 0.3:
                meta = dst / "configs" / "metadata.json"
                meta.write_bytes(mutate_json(rng, meta.read_bytes()))
            return dst
        raise ValueError(kind)

    def _prepare(self, kind: str, rng: random.Random, case: Path):
        path = self._write_input(kind, rng, case)
        out = case / "out"
        heavy = rng.random() < self.heavy_share
        image = str(self.seeds["image"])
        model = str(self.seeds["model"])
        if kind in ("model_yaml", "bundle"):
            allow = rng.random() < 0.5
            if heavy:
                return "segment", [path], self._cli(["segment", image, str(out / "s.nii.gz"), "--model", str(path),
                                                     "--device", "cpu"] + (["--allow-code"] if allow else []))
            return "load_model", [path], self._api(lambda: _load_model(path, allow))
        if kind == "labels_json":
            side = path.with_name("seg.labels.json")
            choice = rng.randrange(3)
            if choice == 0:
                return "read_segmentation", [path, side], self._api(lambda: _read_seg(path))
            if choice == 1:
                return "info", [path, side], self._cli(["info", "--json", str(path)])
            return "export", [path, side], self._cli(["export", str(path), str(out / "exp"), "--formats",
                                                      rng.choice(["nifti,stats", "stats", "nrrd,stl,stats"])])
        if heavy and kind in ("dicom", "dicom_series", "nifti", "nrrd", "mha"):
            if rng.random() < 0.5:
                return "segment", [path], self._cli(["segment", str(path), str(out / "s.nii.gz"), "--model", model,
                                                     "--device", "cpu"])
            return "batch", [path], self._batch(path, out)
        choice = rng.randrange(3)
        if choice == 0:
            return "read_volume", [path], self._api(lambda: _read(path))
        if choice == 1:
            return "info", [path], self._cli(["info", "--json", str(path)])
        suffix = rng.choice([".nii.gz", ".nrrd", ".mha"])
        return "convert", [path], self._cli(["convert", str(path), str(out / f"c{suffix}")])

    def _cli(self, argv: list[str]) -> Callable[[], tuple[str, str]]:
        def call():
            from medseg.cli import main

            self._capture.messages.clear()
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse: not reached with valid argv
                return "crash", f"SystemExit {exc.code}"
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # escaped main()'s handlers
                return "crash", f"{type(exc).__name__} escaped main(): {str(exc)[:300]}"
            if rc == 70:
                return "crash", " | ".join(self._capture.messages)[-600:]
            if rc == 1 and any("out of memory" in m for m in self._capture.messages):
                return "memory", " | ".join(self._capture.messages)[-600:]
            return ("ok" if rc == 0 else "named"), ""
        return call

    def _api(self, fn: Callable[[], object]) -> Callable[[], tuple[str, str]]:
        def call():
            from medseg.core.errors import MedsegError, ResourceLimitError

            try:
                fn()
            except ResourceLimitError:
                return "named", ""
            except MemoryError as exc:
                return "memory", f"MemoryError: {exc}"
            except (MedsegError, FileNotFoundError):
                return "named", ""
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # also a native decoder's panic (a BaseException)
                import traceback

                return "crash", f"{type(exc).__name__}: {str(exc)[:300]} :: {traceback.format_exc(limit=-3)[-800:]}"
            return "ok", ""
        return call

    def _batch(self, path: Path, out: Path) -> Callable[[], tuple[str, str]]:
        def call():
            from medseg.batch import BatchConfig, SegmenterSpec, run_batch

            study = path if path.is_dir() else path.parent
            try:
                summary = run_batch(study, out / "batch", config=BatchConfig(formats=("nifti", "stats"),
                                                                             segmenter=SegmenterSpec("threshold")))
            except Exception as exc:
                from medseg.core.errors import MedsegError

                if isinstance(exc, MedsegError):
                    return "named", ""
                return "crash", f"{type(exc).__name__}: {exc}"
            crashes = [r["error"] for r in summary["series"] if r["status"] == "failed"
                       and not _named_error_text(r.get("error") or "")]
            if crashes:
                return "crash", f"batch series failed with a non-medseg error: {crashes[0][:300]}"
            return "ok", ""
        return call


_MEDSEG_ERRORS = None


def _named_error_text(text: str) -> bool:
    """True when a batch record's ``"Type: message"`` names one of medseg's errors."""
    global _MEDSEG_ERRORS
    if _MEDSEG_ERRORS is None:
        import medseg.core.errors as errors

        _MEDSEG_ERRORS = {n for n in dir(errors) if isinstance(getattr(errors, n), type)
                          and issubclass(getattr(errors, n), errors.MedsegError)} | {"FileNotFoundError"}
    return text.split(":", 1)[0] in _MEDSEG_ERRORS


def _read(path: Path):
    from medseg.io import read_volume

    return read_volume(path)


def _read_seg(path: Path):
    from medseg.io import read_segmentation

    return read_segmentation(path)


def _load_model(path: Path, allow_code: bool):
    from medseg.models import load_model

    return load_model(path, device="cpu", allow_code=allow_code)
