"""Training data: find cases, split them stably, preprocess them onto the model grid."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from medseg.core.errors import FileFormatError, InputError
from medseg.io import IMAGE_SUFFIXES
from medseg.io.atomic import full_suffix
from medseg.core.progress import CancelCallback, ProgressCallback, StepProgress

__all__ = ["Case", "find_cases", "split_cases", "case_fold", "dataset_labels", "load_case"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Case:
    """One training case: an image (file or DICOM folder) and its label map."""

    case_id: str
    image: Path
    label: Path


def _stem(p: Path) -> str:
    name = p.name
    suffix = full_suffix(p)
    if suffix in IMAGE_SUFFIXES:
        name = name[: len(name) - len(suffix)]
    return re.sub(r"_0000$", "", name)  # nnU-Net channel suffix


def find_cases(folder: str | Path) -> list[Case]:
    """Cases of a Decathlon folder (``dataset.json``) or of ``imagesTr/`` + ``labelsTr/``.

    Images are NIfTI/NRRD/MHA files or DICOM series folders (``imagesTr/<case>/``); labels are
    matched by case name (an nnU-Net ``_0000`` suffix is ignored).

    Raises
    ------
    FileFormatError
        If the folder has neither layout, or an image has no label.
    """
    root = Path(folder)
    ds = root / "dataset.json"
    if ds.is_file():
        try:
            data = json.loads(ds.read_text())
            entries = data["training"]
            cases = [Case(_stem(Path(e["image"])), (root / e["image"]).resolve(), (root / e["label"]).resolve())
                     for e in entries]
        except (ValueError, KeyError, TypeError) as exc:
            raise FileFormatError(ds, f"not a Decathlon dataset.json ({exc})",
                                  'expected {"training": [{"image": "./imagesTr/a.nii.gz", "label": "./labelsTr/a.nii.gz"}]}') from exc
    else:
        img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
        if not img_dir.is_dir() or not lab_dir.is_dir():
            raise FileFormatError(root, "no dataset.json and no imagesTr/ + labelsTr/ folders",
                                  "lay the data out as imagesTr/<case>.nii.gz and labelsTr/<case>.nii.gz")
        labels = {_stem(p): p for p in lab_dir.iterdir() if full_suffix(p) in IMAGE_SUFFIXES}
        cases = []
        for p in sorted(img_dir.iterdir()):
            if p.name.startswith(".") or not (p.is_dir() or full_suffix(p) in IMAGE_SUFFIXES):
                continue
            cid = _stem(p)
            if cid not in labels:
                raise FileFormatError(p, f"image of case {cid!r} has no label map in {lab_dir}",
                                      f"add {lab_dir / (cid + '.nii.gz')} or remove the image")
            cases.append(Case(cid, p, labels[cid]))
    missing = [c for c in cases if not c.image.exists() or not c.label.exists()]
    if missing:
        raise FileFormatError(missing[0].image if not missing[0].image.exists() else missing[0].label,
                              "listed in the dataset but missing")
    if not cases:
        raise FileFormatError(root, "holds no training cases")
    return cases


def dataset_labels(folder: str | Path) -> Optional[dict[int, str]]:
    """``{index: name}`` from a Decathlon ``dataset.json`` (background dropped), if present."""
    ds = Path(folder) / "dataset.json"
    if not ds.is_file():
        return None
    data = json.loads(ds.read_text())
    labels = data.get("labels")
    if not isinstance(labels, dict):
        return None
    out = {}
    for k, v in labels.items():
        if str(k).isdigit():  # Decathlon: {"0": "background", "1": "liver"}
            if int(k):
                out[int(k)] = str(v)
        elif isinstance(v, int) and v:  # nnU-Net v2: {"background": 0, "liver": 1}
            out[v] = str(k)
    return out or None


def case_fold(case_id: str, folds: int) -> int:
    """Fold of a case from a hash of its id: adding cases never moves existing ones."""
    return int(hashlib.sha256(case_id.encode("utf-8")).hexdigest(), 16) % folds


def split_cases(cases: list[Case], *, folds: int = 5, val_fold: int = 0) -> tuple[list[Case], list[Case]]:
    """(training, validation): validation = cases whose :func:`case_fold` is ``val_fold``."""
    if folds < 2 or not 0 <= val_fold < folds:
        raise InputError(f"need folds >= 2 and 0 <= val_fold < folds, got folds={folds}, val_fold={val_fold}")
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"case ids must be unique, duplicated: {dup[:5]}")
    val = [c for c in cases if case_fold(c.case_id, folds) == val_fold]
    train = [c for c in cases if case_fold(c.case_id, folds) != val_fold]
    return train, val


def load_case(case: Case, preprocessing, *, num_labels: int) -> dict:
    """Read one case and put image and labels on the model grid.

    Returns ``{"image": (C, I, J, K) tensor, "label": (1, I, J, K) tensor, "case_id": str}``.
    """
    from medseg.inference.mapping import preprocess_labels, preprocess_volume
    from medseg.io import read_volume

    image = read_volume(case.image)
    label = read_volume(case.label)
    image.require_same_grid(label, what=f"label map {case.label}")
    top = int(label.array.max())
    if top > num_labels:
        raise InputError(f"{case.label}: label value {top} exceeds the config's {num_labels} labels; "
                         "add it to the config's labels or fix the label map")
    x = preprocess_volume(image, preprocessing)
    y = preprocess_labels(label.with_array(label.array.astype("float32")), preprocessing)
    return {"image": x.as_tensor(), "label": y.as_tensor().round(), "case_id": case.case_id}


def load_cases(cases: list[Case], preprocessing, *, num_labels: int,
               progress: Optional[ProgressCallback] = None, cancel: Optional[CancelCallback] = None) -> list[dict]:
    """:func:`load_case` for each case, with progress."""
    steps = StepProgress(len(cases), "loading cases", progress=progress, cancel=cancel)
    out = []
    for c in cases:
        out.append(load_case(c, preprocessing, num_labels=num_labels))
        steps.step()
    return out
