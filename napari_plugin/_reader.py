"""npe2 readers: DICOM folders and files, NIfTI, NRRD, MetaImage.

``get_reader`` returns ``None`` for anything it cannot read and never raises; the returned
reader function turns medseg errors into a napari warning and returns ``None`` (napari then
tries the next plugin). Images open with their physical geometry (see :mod:`._layers`); a
file with a ``.labels.json`` sidecar, or an integer file named like a label map, opens as a
labels layer with names and colours.

A DICOM folder holding several series opens the default series chosen by
:func:`medseg.io.dicom.select_series`; the others are listed in the layer's
``metadata["medseg"]["series"]`` and in the *DICOM series* dock widget, which opens any of them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
ReaderFunction = Callable[[Union[PathLike, Sequence[PathLike]]], Optional[list]]

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_LABEL_HINTS = ("label", "seg", "mask")
_MAX_PROBE = 64


def get_reader(path: Union[PathLike, Sequence[PathLike]]) -> Optional[ReaderFunction]:
    """Reader function for ``path`` or ``None`` (never raises)."""
    try:
        if isinstance(path, (list, tuple)):
            if len(path) != 1:
                return None
            path = path[0]
        p = Path(path)
        name = p.name.lower()
        if p.is_dir():
            return read_dicom_folder if _folder_has_dicom(p) else None
        if name.endswith(_IMAGE_SUFFIXES):
            return read_image_file
        if p.is_file() and _is_dicom_file(p):
            return read_dicom_folder
    except Exception:  # noqa: BLE001 - a reader probe must never raise
        log.debug("medseg get_reader failed on %r", path, exc_info=True)
    return None


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".ima")


def _folder_has_dicom(folder: Path) -> bool:
    n = 0
    for f in folder.rglob("*"):
        if f.is_file():
            if _is_dicom_file(f):
                return True
            n += 1
            if n >= _MAX_PROBE:
                break
    return False


def _notify(message: str) -> None:
    log.warning(message)
    try:
        from napari.utils.notifications import show_warning

        show_warning(message)
    except Exception:  # noqa: BLE001 - no napari notification manager (scripts)
        pass


def _is_label_file(path: Path, volume: Any) -> bool:
    import numpy as np

    from medseg.io import sidecar_path

    if sidecar_path(path).exists():
        return True
    return np.issubdtype(volume.array.dtype, np.integer) and any(h in path.name.lower() for h in _LABEL_HINTS)


def read_image_file(path: Union[PathLike, Sequence[PathLike]]) -> Optional[list]:
    """Layer data for a NIfTI, NRRD or MetaImage file (labels when it is a label map)."""
    from medseg.core.errors import MedsegError
    from medseg.io import read_segmentation, read_volume

    from medseg_napari._layers import image_layer_data, labels_layer_data

    p = Path(path[0] if isinstance(path, (list, tuple)) else path)
    try:
        vol = read_volume(p)
        if vol.array.ndim == 3 and _is_label_file(p, vol):
            return [labels_layer_data(read_segmentation(p))]
        return [image_layer_data(vol)]
    except (MedsegError, OSError, ValueError) as exc:
        _notify(f"medseg could not open {p}: {exc}")
        return None


def list_series(folder: PathLike, *, progress=None, cancel=None) -> tuple[list[dict], Optional[str]]:
    """Series of a DICOM folder as plain dicts, and the UID of the default series.

    Each dict has ``uid``, ``description``, ``modality``, ``n`` (number of images) and
    ``label`` (a one-line summary for a picker).
    """
    from medseg.io import dicom

    scan = dicom.scan_dicom(folder, progress=progress, cancel=cancel)
    default = dicom.select_series(scan)
    rows = [_series_row(s) for s in scan.series]
    return rows, _series_row(default)["uid"]


def _first_attr(obj: Any, names: Sequence[str], default: Any = "") -> Any:
    for n in names:
        v = getattr(obj, n, None)
        if v not in (None, ""):
            return v
    return default


def _series_row(series: Any) -> dict:
    uid = str(_first_attr(series, ("series_uid", "series_instance_uid", "uid", "SeriesInstanceUID")))
    desc = str(_first_attr(series, ("description", "series_description", "SeriesDescription")))
    modality = str(_first_attr(series, ("modality", "Modality")))
    files = _first_attr(series, ("files", "paths"), [])
    n = int(_first_attr(series, ("n_images", "n_files", "num_images", "count"), len(files) if files else 0))
    number = _first_attr(series, ("series_number", "SeriesNumber"), "")
    label = f"{number} {modality} {desc} ({n} images) {uid[-12:]}".strip()
    return {"uid": uid, "description": desc, "modality": modality, "n": n, "label": " ".join(label.split())}


def read_dicom_series(folder: PathLike, series_uid: Optional[str] = None, *, progress=None, cancel=None) -> list:
    """Layer data for one series of a DICOM folder (the default series when ``series_uid`` is None)."""
    from medseg.io import read_volume

    from medseg_napari._layers import METADATA_KEY, image_layer_data

    vol = read_volume(folder, series_uid=series_uid, progress=progress, cancel=cancel)
    data, kwargs, kind = image_layer_data(vol)
    md = kwargs["metadata"][METADATA_KEY]
    md["dicom_folder"] = str(folder)
    for w in vol.meta.get("warnings") or []:
        _notify(f"{Path(folder).name}: {w}")
    return [(data, kwargs, kind)]


def _dicom_object_kind(path: Path) -> Optional[str]:
    from medseg.export.reopen import dicom_object_kind

    return dicom_object_kind(path) if path.suffix.lower() in (".dcm", "") or path.is_file() else None


def _labels_on_series(seg: Any, image_name: str, folder: Path) -> tuple:
    """Labels layer data of a SEG/RTSTRUCT read onto its series, exportable to that series again."""
    from medseg_napari._layers import METADATA_KEY, labels_layer_data

    name = Path(str(seg.label_map.meta.get("opened_from", "labels"))).stem
    data, kwargs, kind = labels_layer_data(seg, name=f"{image_name} {name}", opacity=0.5)
    kwargs["metadata"][METADATA_KEY]["source"] = {"layer": image_name, "dicom_folder": str(folder),
                                                  "meta": dict(seg.label_map.meta)}
    return data, kwargs, kind


def _objects_next_to(folder: Path, image: tuple) -> list:
    """Labels layers of the SEG / RTSTRUCT files in ``folder`` that reference the opened series."""
    from medseg.core.errors import MedsegError
    from medseg.export.reopen import read_dicom_labels

    from medseg_napari._layers import METADATA_KEY, volume_from_layer

    md = image[1]["metadata"][METADATA_KEY]
    volume = None
    out = []
    for f in sorted(folder.iterdir()):
        if not f.is_file() or not _dicom_object_kind(f):
            continue
        try:
            if volume is None:
                from medseg.core.volume import Volume

                volume = Volume(image[0], md["affine"], dict(md.get("meta") or {}))
            seg = read_dicom_labels(f, source=folder, volume=volume)
        except (MedsegError, OSError, ValueError) as exc:
            _notify(f"medseg could not open {f.name} on its series: {exc}")
            continue
        out.append(_labels_on_series(seg, image[1]["name"], folder))
    return out


def read_dicom_object(path: PathLike) -> list:
    """A DICOM SEG or RTSTRUCT file: its source series (image layer) and the labels on that grid."""
    from medseg.export.reopen import read_dicom_labels

    from medseg_napari._layers import METADATA_KEY, image_layer_data

    p = Path(path)
    from medseg.io import read_volume

    seg = read_dicom_labels(p)
    folder = Path(str(seg.label_map.meta.get("files", [p])[0])).parent
    vol = read_volume(folder, series_uid=seg.label_map.meta.get("SeriesInstanceUID"))
    image = image_layer_data(vol)
    image[1]["metadata"][METADATA_KEY]["dicom_folder"] = str(folder)
    return [image, _labels_on_series(seg, image[1]["name"], folder)]


def read_dicom_folder(path: Union[PathLike, Sequence[PathLike]]) -> Optional[list]:
    """Layer data for a DICOM folder (or file): its default series, the others listed."""
    from medseg.core.errors import MedsegError

    from medseg_napari._layers import METADATA_KEY

    p = Path(path[0] if isinstance(path, (list, tuple)) else path)
    try:
        series, default_uid = ([], None)
        if p.is_dir():
            try:
                series, default_uid = list_series(p)
            except ImportError:  # medseg.io.dicom not installed: read_volume decides
                series, default_uid = [], None
        if p.is_file() and _dicom_object_kind(p):
            return read_dicom_object(p)
        layers = read_dicom_series(p, default_uid)
        if p.is_dir():
            layers += _objects_next_to(p, layers[0])
        md = layers[0][1]["metadata"][METADATA_KEY]
        md["series"] = series
        md["series_uid"] = default_uid
        if len(series) > 1:
            chosen = next((s["label"] for s in series if s["uid"] == default_uid), default_uid)
            _notify(f"{p.name} holds {len(series)} DICOM series; opened {chosen}. "
                    "Pick another in Plugins > medseg > DICOM series.")
        return layers
    except (MedsegError, OSError, ValueError) as exc:
        _notify(f"medseg could not open DICOM {p}: {exc}")
        return None
