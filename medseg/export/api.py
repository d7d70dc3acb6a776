"""One call that writes the requested formats for one segmentation."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

from medseg.core.errors import InputError
from medseg.core.progress import CancelCallback, ProgressCallback, check_cancel, report
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume

__all__ = ["FORMATS", "DICOM_FORMATS", "parse_formats", "export_segmentation"]

log = logging.getLogger(__name__)

FORMATS = ("nifti", "nrrd", "seg", "rtstruct", "stl", "stats")
DICOM_FORMATS = ("seg", "rtstruct")


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """Validate a comma-separated string or list of format names (order kept, duplicates dropped).

    Raises
    ------
    InputError
        An unknown name, or none at all.
    """
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    out: list[str] = []
    for f in (s.strip().lower() for s in items):
        if not f:
            continue
        if f not in FORMATS:
            raise InputError(f"unknown export format {f!r}; choose from {', '.join(FORMATS)}")
        if f not in out:
            out.append(f)
    if not out:
        raise InputError(f"no export format given; choose from {', '.join(FORMATS)}")
    return tuple(out)


def export_segmentation(
    segmentation: Segmentation,
    folder: str | Path,
    *,
    formats: str | Sequence[str] = ("nifti", "stats"),
    image: Optional[Volume] = None,
    algorithm: Optional[str] = None,
    seg_type: str = "binary",
    overwrite: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelCallback] = None,
) -> dict:
    """Write ``segmentation`` in each requested format into ``folder``.

    Parameters
    ----------
    segmentation : Segmentation
    folder : str or Path
        Output folder (created).
    formats : str or list of str
        Names from :data:`FORMATS`.
    image : Volume, optional
        The source image: needed for ``stats`` intensities and, read from DICOM (with its
        ``dicom_source`` record), for ``seg`` and ``rtstruct``.
    algorithm : str, optional
        Name of the model that produced the labels (recorded in SEG/RTSTRUCT).
    seg_type : {"binary", "labelmap"}
        DICOM SEG encoding.
    overwrite : bool
        Replace files of a previous export in ``folder`` (default: refuse before writing
        anything; see :mod:`medseg.io.output_policy`).
    progress, cancel : callables, optional
        One step per format.

    Returns
    -------
    dict
        ``{"files": {format: [relative paths]}, "timings_s": {format: s},
        "skipped": {format: reason}, "statistics": stats or None}``. SEG, RTSTRUCT and STL
        are skipped (with the reason) when the label map holds no label.

    Raises
    ------
    InputError
        ``seg``/``rtstruct`` requested without a DICOM source image.
    OutputError, OutputExistsError
        ``folder`` is a file, is or holds an input, or holds files this export would write
        (without ``overwrite``).
    """
    from medseg.io.output_policy import check_output_dir, inputs_of, protect_inputs

    fmts = parse_formats(formats)
    folder = Path(folder)
    has_dicom = image is not None and (image.dicom_source is not None or bool(image.meta.get("files")))
    wanted_dicom = [f for f in fmts if f in DICOM_FORMATS]
    if wanted_dicom and not has_dicom:
        raise InputError(
            f"formats {wanted_dicom} need the source DICOM series: pass image= read from DICOM "
            f"(read_volume on the DICOM folder); the given image has no dicom_source and no meta['files']"
        )
    inputs = inputs_of(segmentation, image)
    with protect_inputs(inputs):
        check_output_dir(folder, overwrite=overwrite, will_write=planned_files(segmentation, fmts))
        folder.mkdir(parents=True, exist_ok=True)
        return _export(segmentation, folder, fmts, image=image, algorithm=algorithm, seg_type=seg_type,
                       overwrite=overwrite, progress=progress, cancel=cancel)


def planned_files(segmentation: Segmentation, formats: Sequence[str]) -> list[str]:
    """Relative paths :func:`export_segmentation` writes for ``formats`` (checked before writing)."""
    from medseg.export._common import exported_labels, safe_name

    names = {"nifti": ["labels.nii.gz", "labels.labels.json"], "nrrd": ["labels.nrrd", "labels.labels.json"],
             "seg": ["seg.dcm"], "rtstruct": ["rtstruct.dcm"],
             "stats": ["stats.json", "stats.csv", "stats_instances.csv"]}
    out: list[str] = []
    for fmt in formats:
        if fmt == "stl":
            out += [f"meshes/{l.index}_{safe_name(l.name)}.stl" for l in exported_labels(segmentation)]
        else:
            out += names[fmt]
    return out


def _export(segmentation, folder, fmts, *, image, algorithm, seg_type, overwrite, progress, cancel) -> dict:
    from medseg.export.labelmap import write_label_map
    from medseg.export.mesh import write_stl
    from medseg.export.rtstruct import write_rtstruct
    from medseg.export.seg import write_dicom_seg
    from medseg.export.stats import label_statistics, write_statistics

    files: dict[str, list[str]] = {}
    timings: dict[str, float] = {}
    stats = None
    skipped: dict[str, str] = {}
    empty = not segmentation.present_indices()
    for n, fmt in enumerate(fmts):
        check_cancel(cancel, "export")
        report(progress, n, len(fmts), f"export {fmt}")
        if empty and fmt in ("seg", "rtstruct", "stl"):
            skipped[fmt] = "the label map is empty (no label found)"
            log.warning("skipping %s: the label map is empty", fmt)
            continue
        t0 = time.perf_counter()
        if fmt in ("nifti", "nrrd"):
            name = "labels.nii.gz" if fmt == "nifti" else "labels.nrrd"
            # nifti and nrrd share the label-table sidecar; the folder was checked before writing
            again = fmt == "nrrd" and "nifti" in files
            written = list(write_label_map(segmentation, folder / name, overwrite=overwrite or again).values())
        elif fmt == "seg":
            written = [write_dicom_seg(segmentation, folder / "seg.dcm", source=image, algorithm=algorithm,
                                       segmentation_type=seg_type)]  # type: ignore[arg-type]
        elif fmt == "rtstruct":
            written = [write_rtstruct(segmentation, folder / "rtstruct.dcm", source=image, algorithm=algorithm)]
        elif fmt == "stl":
            written = list(write_stl(segmentation, folder / "meshes").values())
        else:
            stats = label_statistics(segmentation, image if image is not None and image.array.ndim == 3 else None)
            written = list(write_statistics(stats, folder).values())
        timings[fmt] = round(time.perf_counter() - t0, 4)
        files[fmt] = sorted(str(Path(p).relative_to(folder)) for p in written)
    report(progress, len(fmts), len(fmts), "export done")
    return {"files": files, "timings_s": timings, "skipped": skipped, "statistics": stats}
