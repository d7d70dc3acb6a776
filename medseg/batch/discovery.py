"""Find every image series in a nested study folder and decide which ones to run.

DICOM files are grouped by SeriesInstanceUID with :func:`medseg.io.dicom.scan_dicom` (headers
only); NIfTI, NRRD and MetaImage files are one series each. Files that are not images (reports,
structure sets, corrupt or non-DICOM files) are listed with the scanner's reason, so a batch
summary accounts for every file of the study.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from medseg.core.errors import InputError
from medseg.export._common import safe_name
from medseg.io import IMAGE_SUFFIXES
from medseg.io.atomic import full_suffix
from medseg.core.progress import CancelCallback, ProgressCallback

__all__ = ["SeriesTask", "SkippedItem", "Discovery", "SelectionRule", "discover_series", "fingerprint",
           "check_unchanged"]

log = logging.getLogger(__name__)

# data files that belong to a header file (.nhdr/.mhd) and are not series of their own
_DATA_SUFFIXES = {".raw", ".zraw", ".img", ".gz", ".bz2"}
_SIDE_SUFFIXES = {".json", ".txt", ".md", ".csv"}


@dataclass(frozen=True)
class SeriesTask:
    """One series to segment (picklable: sent to workers).

    Attributes
    ----------
    id : str
        Stable, file-system-safe name of the series' output folder.
    kind : {"dicom", "file"}
    path : str
        For DICOM the folder holding the series' files; for a file the file itself.
    series_uid : str
        SeriesInstanceUID (the scanner's grouping key for DICOM); "" for files.
    modality, description : str
        From the headers (files: modality "", description = file name).
    n_slices : int or None
        Images along z (None when the header cannot be read).
    problem : str or None
        Why the scanner says the series cannot load, if it does.
    voxels : int or None
        Voxels of the volume from the headers (a work estimate: parallel runs start the
        largest series first); None when unknown.
    files : tuple of (path, size in bytes, mtime in ns)
        The series' files as discovered; :func:`check_unchanged` compares them with what was
        loaded ("series changed during the run").
    """

    id: str
    kind: str
    path: str
    series_uid: str = ""
    modality: str = ""
    description: str = ""
    n_slices: Optional[int] = None
    problem: Optional[str] = None
    voxels: Optional[int] = None
    files: tuple = ()

    def summary(self) -> dict:
        return {"id": self.id, "kind": self.kind, "path": self.path, "series_uid": self.series_uid,
                "modality": self.modality, "description": self.description, "n_slices": self.n_slices}


def fingerprint(paths) -> tuple:
    """``((path, size, mtime_ns), ...)`` of files, sorted by path; a missing file gets size -1."""
    out = []
    for p in sorted({str(p) for p in paths}):
        try:
            st = os.stat(p)
            out.append((p, int(st.st_size), int(st.st_mtime_ns)))
        except OSError:
            out.append((p, -1, 0))
    return tuple(out)


def check_unchanged(task: "SeriesTask", loaded_files=()) -> None:
    """Raise :class:`~medseg.core.errors.SeriesChangedError` when the series' files differ from discovery.

    Every discovered file must still exist with the same size and modification time, and every
    file that was loaded (``loaded_files``) must have been discovered.
    """
    from medseg.core.errors import SeriesChangedError

    if not task.files:
        return
    before = {p: (size, mtime) for p, size, mtime in task.files}
    problems = []
    for p, size, mtime in fingerprint(before):
        if size < 0:
            problems.append(f"{Path(p).name} vanished")
        elif (size, mtime) != before[p]:
            problems.append(f"{Path(p).name} was rewritten ({before[p][0]} -> {size} bytes)")
    extra = sorted({str(f) for f in loaded_files if f} - set(before))
    problems += [f"{Path(p).name} appeared" for p in extra]
    if problems:
        n = len(problems)
        raise SeriesChangedError(
            f"{task.path}: series changed during the run: {'; '.join(problems[:5])}{' ...' if n > 5 else ''} "
            f"({n} change(s) since discovery of {len(before)} file(s)); rerun the batch once the folder is "
            f"complete (finished series are kept)")


@dataclass(frozen=True)
class SkippedItem:
    """A file or series that will not be segmented, and why."""

    path: str
    reason: str
    status: str = "not_an_image"  # or "excluded" (by the selection rule)
    series: Optional[dict] = None


@dataclass
class Discovery:
    """Series found in a study folder."""

    tasks: list[SeriesTask] = field(default_factory=list)
    skipped: list[SkippedItem] = field(default_factory=list)


@dataclass(frozen=True)
class SelectionRule:
    """Which series a batch runs.

    Attributes
    ----------
    modalities : tuple of str
        Allowed modalities (e.g. ``("CT",)``); empty = all. Files without a modality (NIfTI,
        NRRD) pass this test.
    min_slices : int
        Minimum number of slices (images along z).
    description : str or None
        Regular expression searched (case-insensitive) in the SeriesDescription, or in the
        file name for NIfTI/NRRD files.
    """

    modalities: tuple[str, ...] = ()
    min_slices: int = 1
    description: Optional[str] = None

    def __post_init__(self) -> None:
        if self.min_slices < 1:
            raise InputError(f"min_slices must be >= 1, got {self.min_slices}")
        if self.description is not None:
            try:
                re.compile(self.description)
            except re.error as exc:
                raise InputError(f"description pattern {self.description!r} is not a valid regular "
                                 f"expression ({exc})") from exc
        object.__setattr__(self, "modalities", tuple(m.upper() for m in self.modalities))

    def reason_to_exclude(self, task: SeriesTask) -> Optional[str]:
        """``None`` when the series is selected, else why not."""
        if self.modalities and task.modality and task.modality.upper() not in self.modalities:
            return f"modality {task.modality} not in {list(self.modalities)}"
        if task.n_slices is not None and task.n_slices < self.min_slices:
            return f"{task.n_slices} slices < minimum {self.min_slices}"
        if self.description is not None and not re.search(self.description, task.description or "", re.IGNORECASE):
            return f"description {task.description!r} does not match {self.description!r}"
        return None


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _file_shape(path: Path) -> Optional[tuple[int, ...]]:
    """Array size of a NIfTI/NRRD/MHA file from its header (x, y, z, ...), None when unreadable."""
    try:
        if full_suffix(path) in (".nii", ".nii.gz"):
            import nibabel as nib

            return tuple(int(n) for n in nib.load(str(path)).shape)
        import SimpleITK as sitk

        from medseg.io import validate_text_header

        validate_text_header(path, "nrrd" if full_suffix(path) in (".nrrd", ".nhdr") else "mha")
        r = sitk.ImageFileReader()
        r.SetFileName(str(path))
        r.ReadImageInformation()
        return tuple(int(n) for n in r.GetSize())
    except Exception:  # unreadable headers are reported when the series is processed
        return None


def discover_series(
    study_dir: str | Path,
    *,
    rule: SelectionRule = SelectionRule(),
    exclude: Optional[str | Path] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
    on_task: Optional[Callable[[SeriesTask], None]] = None,
) -> Discovery:
    """Find the image series of a study folder and apply the selection rule.

    Parameters
    ----------
    study_dir : str or Path
        Folder searched recursively.
    rule : SelectionRule
        Series failing it are listed in ``skipped`` with status ``"excluded"``.
    exclude : str or Path, optional
        A folder to ignore (the batch output folder when it lies inside the study).
    progress, cancel : callables, optional
        Passed to the DICOM scan.
    on_task : callable, optional
        Called with each selected series as soon as it is known, before discovery ends:
        NIfTI/NRRD/MHA files while the folder is walked, DICOM series once every header is
        read (a series may span folders). Batch runs use it to start work early.

    Returns
    -------
    Discovery
        Tasks sorted by id; skipped files and excluded series with reasons.

    Raises
    ------
    FileNotFoundError
        ``study_dir`` does not exist.
    """
    from medseg.io.dicom import scan_dicom

    root = Path(study_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: study folder not found")
    excluded_root = Path(exclude).resolve() if exclude is not None else None

    def ignored(p: str | Path) -> bool:
        if excluded_root is None:
            return False
        rp = Path(p).resolve()
        return rp == excluded_root or excluded_root in rp.parents

    selected: list[SeriesTask] = []
    excluded: list[tuple[str, SkippedItem]] = []

    def select(t: SeriesTask) -> None:
        why = rule.reason_to_exclude(t)
        if why is not None:
            excluded.append((t.id, SkippedItem(t.path, why, "excluded", t.summary())))
            return
        selected.append(t)
        if on_task is not None:
            on_task(t)

    # image files first (cheap, header only): their series can start while the DICOM headers are read
    label_maps = _image_files(root, ignored, select)
    scan = scan_dicom(root, progress=progress, cancel=cancel)
    for s in scan.series:
        files = [f for f in s.files if not ignored(f)]
        if files:
            select(_dicom_task(s, files))
    out = Discovery()
    for sk in scan.skipped:
        p = Path(sk.path)
        suffix = full_suffix(p)
        if ignored(p) or suffix in IMAGE_SUFFIXES or suffix in _DATA_SUFFIXES or suffix in _SIDE_SUFFIXES:
            continue
        out.skipped.append(SkippedItem(str(p), sk.reason))
    out.skipped.extend(label_maps)
    out.skipped.extend(item for _, item in sorted(excluded, key=lambda e: e[0]))
    out.tasks = sorted(selected, key=lambda t: t.id)
    log.info("%s: %d series selected, %d skipped", root, len(out.tasks), len(out.skipped))
    return out


def _image_files(root: Path, ignored: Callable[[Path], bool], select: Callable[[SeriesTask], None]) -> list:
    """Walk ``root`` for NIfTI/NRRD/MHA files, passing each one's task to ``select``; returns the
    label maps found (files with a ``.labels.json`` table), which are not series."""
    label_maps: list[SkippedItem] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not ignored(Path(dirpath) / d))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if full_suffix(p) not in IMAGE_SUFFIXES or name.endswith(".labels.json"):
                continue
            rel = str(p.relative_to(root))
            stem = name[: len(name) - len(full_suffix(p))]
            if (p.parent / f"{stem}.labels.json").is_file():
                label_maps.append(SkippedItem(str(p), "a label map (it has a .labels.json table), not an image",
                                              "excluded"))
                continue
            shape = _file_shape(p)
            select(SeriesTask(safe_name(stem, 48) + "_" + _short_hash(rel), "file", str(p), description=name,
                              n_slices=(int(shape[2]) if len(shape) >= 3 else 1) if shape else None,
                              voxels=math.prod(shape[:3]) if shape else None, files=fingerprint([p])))
    return label_maps


def _dicom_task(s, files: list) -> SeriesTask:
    """The task of one scanned DICOM series (``s``: a scan result series) made of ``files``."""
    folder = os.path.commonpath([str(Path(f).parent) for f in files])
    sid = safe_name(f"{s.modality or 'XX'}_{s.series_number if s.series_number is not None else 'x'}_"
                    f"{s.description or 'series'}", 48) + "_" + _short_hash(s.series_uid)
    n = s.shape[0] if s.shape else s.n_images
    return SeriesTask(sid, "dicom", folder, s.series_uid, s.modality or "", s.description or "",
                      int(n) if n is not None else None, s.problem,
                      voxels=math.prod(s.shape) if s.shape else None, files=fingerprint(files))
