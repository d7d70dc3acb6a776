"""Reading and writing scans and segmentations.

Every reader returns a :class:`~medseg.core.volume.Volume` in medseg's one convention (array
``(Z, Y, X)``, affine voxel → LPS mm); every writer takes one. Formats:

========================  ============================  =========================
format                    read                          write
========================  ============================  =========================
DICOM series (folder)     :func:`read_volume`           DICOM SEG / RTSTRUCT (export)
NIfTI ``.nii[.gz]``       nibabel (sform, else qform)    image and label map
NRRD ``.nrrd``/``.nhdr``  SimpleITK                     image and label map
MetaImage ``.mha/.mhd``   SimpleITK                     image and label map
========================  ============================  =========================

Label maps are written in the smallest unsigned integer type that fits, with a JSON label
table beside them (:func:`sidecar_path`). All writes are atomic.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from medseg.core.errors import FileFormatError, MedsegError
from medseg.io.atomic import atomic_path, full_suffix
from medseg.core.labels import LabelTable
from medseg.core.progress import CancelCallback, ProgressCallback
from medseg.core.segmentation import Segmentation, smallest_label_dtype
from medseg.core.volume import Volume

__all__ = [
    "read_volume",
    "write_volume",
    "read_segmentation",
    "write_segmentation",
    "sidecar_path",
    "FOLDER_LABEL_TABLE",
    "image_format",
    "read_header",
    "validate_text_header",
    "IMAGE_SUFFIXES",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".nii": "nifti", ".nii.gz": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "mha", ".mhd": "mha"}


def image_format(path: str | Path) -> str:
    """``'dicom'`` for a folder or .dcm file, else the format named by the suffix.

    Raises
    ------
    FileFormatError
        For an unknown suffix.
    """
    p = Path(path)
    if p.is_dir():
        return "dicom"
    suffix = full_suffix(p)
    if suffix in IMAGE_SUFFIXES:
        return IMAGE_SUFFIXES[suffix]
    if suffix in (".dcm", ".ima", "") and p.exists():
        return "dicom"
    raise FileFormatError(
        p, f"unknown image format {suffix!r}",
        f"use a DICOM folder or one of {sorted(IMAGE_SUFFIXES)}",
    )


#: A dataset folder's one label table for all its label maps (used when a map has no sidecar).
FOLDER_LABEL_TABLE = "labels.json"


def sidecar_path(path: str | Path) -> Path:
    """Label-table JSON beside a label map: ``seg.nii.gz`` → ``seg.labels.json``."""
    p = Path(path)
    suffix = full_suffix(p)
    return p.with_name(p.name[: len(p.name) - len(suffix)] + ".labels.json")


def read_volume(
    path: str | Path,
    *,
    series_uid: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> Volume:
    """Read an image from a DICOM folder/file, NIfTI, NRRD or MetaImage file.

    Parameters
    ----------
    path : str or Path
        A file, or a folder of DICOM files (searched recursively).
    series_uid : str, optional
        SeriesInstanceUID to load from a DICOM folder holding several series; the default
        rule is documented in :func:`medseg.io.dicom.select_series`.
    progress, cancel : callables, optional
        See :mod:`medseg.core.progress`.

    Returns
    -------
    Volume
        ``meta`` holds provenance (``source``, ``format``, and for DICOM the UIDs,
        Modality and any geometry warnings).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    fmt = image_format(p)
    if fmt == "dicom":
        from medseg.io.dicom import read_dicom

        return read_dicom(p, series_uid=series_uid, progress=progress, cancel=cancel)
    if fmt == "nifti":
        from medseg.io.nifti import read_nifti

        return read_nifti(p)
    return _read_itk(p, fmt)


def _itk_reader(path: Path, fmt: str, *, check_size: bool = True):
    """A SimpleITK reader with the header read (ReadImageInformation), 3D and within the memory limit."""
    import SimpleITK as sitk

    from medseg.io.limits import check_declared_size

    validate_text_header(path, fmt)  # before ITK parses it: some malformed headers corrupt its heap
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _itk_error(path, fmt, exc) from exc
    if reader.GetDimension() != 3:
        raise FileFormatError(path, f"expected a 3D image, found {reader.GetDimension()}D",
                              "medseg works on 3D volumes; stack 2D slices into a series first")
    if not check_size:
        return reader
    try:
        component = sitk.Image([1, 1, 1], reader.GetPixelID()).GetSizeOfPixelComponent()
    except RuntimeError:
        component = 8
    n_comp = max(1, reader.GetNumberOfComponents())
    fields = "sizes/DimSize x type/ElementType"
    check_declared_size(path, reader.GetSize(), component * n_comp, fields=fields)
    return reader


_MET_TYPES = {"MET_CHAR", "MET_UCHAR", "MET_SHORT", "MET_USHORT", "MET_INT", "MET_UINT", "MET_LONG", "MET_ULONG",
              "MET_LONG_LONG", "MET_ULONG_LONG", "MET_FLOAT", "MET_DOUBLE"}
_HEADER_LIMIT = 1 << 16  # bytes of text header read for validation


def _header_lines(path: Path, fmt: str) -> dict[str, str]:
    with open(path, "rb") as fh:
        head = fh.read(_HEADER_LIMIT)
    if fmt == "nrrd":
        if not head.startswith(b"NRRD"):
            raise FileFormatError(path, "not a NRRD file (no 'NRRD000X' magic)", "check the file")
        text = head.split(b"\n\n", 1)[0].decode("latin-1")
        sep = ":"
    else:
        text = head.split(b"ElementDataFile", 1)[0].decode("latin-1")
        sep = "="
    fields = {}
    for line in text.splitlines():
        if sep in line and not line.startswith("#"):
            key, _, value = line.partition(sep)
            fields[key.strip().lower()] = value.strip().lstrip("=").strip()
    return fields


def _ints(path: Path, key: str, text: str, n: int) -> list[int]:
    try:
        values = [int(v) for v in text.split()]
    except ValueError:
        raise FileFormatError(path, f"header field {key} = {text[:80]!r} is not {n} integers", "the header is corrupt") from None
    if len(values) != n or any(v <= 0 for v in values):
        raise FileFormatError(path, f"header field {key} = {text[:80]!r}: expected {n} positive integers",
                              "the header is corrupt")
    return values


def validate_text_header(path: str | Path, fmt: str) -> None:
    """Check a NRRD or MetaImage text header's dimension fields in Python before ITK reads it.

    ITK's MetaIO reader corrupts its heap on some malformed headers (found by fuzzing:
    ``NDims = 99`` aborts the process with ``corrupted size vs. prev_size``), so the fields that
    size its buffers are validated first: 3 dimensions, as many positive sizes, a known element
    type and a sane channel count.

    Raises
    ------
    FileFormatError
        A dimension field is missing, malformed or inconsistent.
    """
    p = Path(path)
    f = _header_lines(p, fmt)
    if fmt == "nrrd":
        dim = f.get("dimension", "")
        if dim not in ("3", "4"):
            raise FileFormatError(p, f"NRRD dimension {dim or '(missing)'}: expected 3 (or 4 with a channel axis)",
                                  "medseg reads 3D volumes")
        _ints(p, "sizes", f.get("sizes", ""), int(dim))
        return
    ndims = f.get("ndims", "")
    if ndims not in ("2", "3"):
        raise FileFormatError(p, f"MetaImage NDims = {ndims or '(missing)'}: expected 3", "medseg reads 3D volumes")
    n = int(ndims)
    _ints(p, "DimSize", f.get("dimsize", ""), n)
    if f.get("elementtype", "") not in _MET_TYPES:
        raise FileFormatError(p, f"MetaImage ElementType = {f.get('elementtype', '(missing)')!r} is not a known type",
                              f"use one of {sorted(_MET_TYPES)}")
    channels = f.get("elementnumberofchannels", "1")
    if not channels.isdigit() or not 1 <= int(channels) <= 64:
        raise FileFormatError(p, f"MetaImage ElementNumberOfChannels = {channels!r}: expected 1 to 64",
                              "the header is corrupt")
    for key, count in (("elementspacing", n), ("offset", n), ("transformmatrix", n * n)):
        if key in f and len(f[key].split()) != count:
            raise FileFormatError(p, f"MetaImage {key} has {len(f[key].split())} values, expected {count}",
                                  "the header is corrupt")


def _itk_error(path: Path, fmt: str, exc: BaseException) -> FileFormatError:
    first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    return FileFormatError(path, f"cannot read as {fmt.upper()} ({first[:300]})",
                           "check that the file (and its data file for .nhdr/.mhd) is complete")


def _read_itk(path: Path, fmt: str) -> Volume:
    from medseg.io.itk import volume_from_sitk

    reader = _itk_reader(path, fmt)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise _itk_error(path, fmt, exc) from exc
    try:
        return volume_from_sitk(image, {"source": str(path), "format": fmt})
    except (ValueError, FloatingPointError) as exc:  # a degenerate direction / spacing in the header
        if isinstance(exc, MedsegError):
            raise
        raise FileFormatError(path, f"invalid geometry in the header ({exc})",
                              "check spacing and direction (space directions / TransformMatrix)") from exc


def read_header(path: str | Path) -> Volume:
    """The grid of an image file from its header alone: nothing is decompressed or read.

    Returns
    -------
    Volume
        Shape, affine and dtype of the file, over a zero-size broadcast array (no memory);
        ``meta["header_only"]`` is True. Not for DICOM folders (see ``scan_dicom``).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    fmt = image_format(p)
    if fmt == "dicom":
        raise FileFormatError(p, "read_header reads NIfTI, NRRD and MHA headers", "use medseg.io.dicom.scan_dicom")
    meta = {"source": str(p), "format": fmt, "header_only": True}
    try:
        if fmt == "nifti":
            from medseg.io.nifti import affine_from_nibabel, nifti_header

            img = nifti_header(p)
            shape = tuple(int(d) for d in img.header.get_data_shape())
            if len(shape) == 4 and shape[3] == 1:
                shape = shape[:3]
            if len(shape) not in (3, 4):
                raise FileFormatError(p, f"expected a 3D or 4D NIfTI image, got shape {shape}")
            zyx = shape[::-1]
            dtype = np.dtype(img.header.get_data_dtype())
            affine = affine_from_nibabel(img)
        else:
            from medseg.io.itk import affine_from_sitk

            reader = _itk_reader(p, fmt, check_size=False)
            zyx = tuple(int(d) for d in reader.GetSize())[::-1]
            if reader.GetNumberOfComponents() > 1:
                zyx = (reader.GetNumberOfComponents(),) + zyx
            import SimpleITK as sitk

            dtype = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], reader.GetPixelID())).dtype
            affine = affine_from_sitk(reader)
        return Volume(np.broadcast_to(np.zeros((), dtype), zyx), affine, meta)
    except MedsegError:
        raise
    except Exception as exc:  # nibabel/SimpleITK/geometry checks on a corrupt header
        raise FileFormatError(p, f"cannot read the {fmt.upper()} header ({type(exc).__name__}: {exc})",
                              "check that the file is complete and its header valid") from exc


def write_volume(volume: Volume, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write an image to NIfTI, NRRD or MetaImage, chosen by suffix; atomically.

    Follows the output policy (:mod:`medseg.io.output_policy`): ``path`` may not be the file
    the volume was read from (``meta["source"]``/``meta["files"]``, compared resolved and by
    inode) nor any input registered with ``protect_inputs``.

    Parameters
    ----------
    volume : Volume
    path : str or Path
        ``.nii[.gz]``, ``.nrrd`` or ``.mha``.
    overwrite : bool
        Replace an existing file at ``path`` (default: refuse).

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    OutputError, OutputExistsError
        See :func:`medseg.io.output_policy.check_output_file`.
    """
    from medseg.io.output_policy import check_output_file, inputs_of, protect_inputs

    p = Path(path)
    fmt = image_format(p) if full_suffix(p) in IMAGE_SUFFIXES else None
    if fmt is None:
        raise FileFormatError(p, f"cannot write format {full_suffix(p)!r}",
                              f"use one of {sorted(IMAGE_SUFFIXES)} (DICOM SEG/RTSTRUCT: medseg.export)")
    if fmt == "mha" and full_suffix(p) == ".mhd":
        raise FileFormatError(p, "cannot write a two-file .mhd atomically", "write .mha instead")
    with protect_inputs(inputs_of(volume)):
        check_output_file(p, overwrite=overwrite)
        with atomic_path(p, overwrite=overwrite) as tmp:
            if fmt == "nifti":
                from medseg.io.nifti import write_nifti

                write_nifti(volume, tmp)
            else:
                import SimpleITK as sitk

                from medseg.io.itk import volume_to_sitk

                sitk.WriteImage(volume_to_sitk(volume), str(tmp), useCompression=True)
    log.info("wrote %s", p)
    return p


def write_segmentation(segmentation: Segmentation, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a label map (smallest unsigned int dtype) and its ``.labels.json`` sidecar.

    Both files are checked against the output policy before either is written, so a refused
    write leaves nothing half-done. ``overwrite`` as in :func:`write_volume`.
    """
    from medseg.io.output_policy import check_output_file, inputs_of, protect_inputs

    seg = segmentation
    side = sidecar_path(path)
    with protect_inputs(inputs_of(seg.label_map)):
        check_output_file(path, overwrite=overwrite)
        check_output_file(side, overwrite=overwrite)
        dt = smallest_label_dtype(max(seg.labels.max_index, int(seg.array.max(initial=0))))
        out = write_volume(seg.label_map.with_array(seg.array.astype(dt)), path, overwrite=overwrite)
        with atomic_path(side, overwrite=overwrite) as tmp:
            seg.labels.write(tmp)
    return out


def read_segmentation(path: str | Path, *, labels: LabelTable | None = None) -> Segmentation:
    """Read a label map and its label table.

    The table is ``labels`` when given, else the map's sidecar (``seg.nii.gz`` →
    ``seg.labels.json``), else a folder-level ``labels.json`` beside it (a dataset's one table
    for all its maps, e.g. ``{"1": "spleen", ...}``), else the values named ``label_<n>``.
    """
    vol = read_volume(path)
    arr = vol.array
    if arr.ndim != 3:
        raise FileFormatError(path, f"a label map must be 3D, found shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise FileFormatError(path, "label map holds non-integer values", "is this an image rather than labels?")
        arr = arr.astype(np.int64)
    if labels is None:
        side = sidecar_path(path)
        folder_table = Path(path).parent / FOLDER_LABEL_TABLE
        if side.exists():
            labels = LabelTable.read(side)
        elif folder_table.is_file():
            labels = LabelTable.read(folder_table)
        else:
            labels = LabelTable.from_names({int(v): f"label_{int(v)}" for v in np.unique(arr) if v != 0})
    return Segmentation(vol.with_array(arr), labels)
