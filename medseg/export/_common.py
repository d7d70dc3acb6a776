"""Helpers shared by the exporters: which labels to write, their codes, safe file names."""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone

from medseg.core.labels import Code, Label, default_color
from medseg.core.segmentation import Segmentation

__all__ = ["exported_labels", "codes_of", "safe_name", "DEFAULT_CATEGORY", "DEFAULT_TYPE", "now_dicom"]

log = logging.getLogger(__name__)

#: Used when a label has no code: SNOMED CT "Tissue" (CID 7150 category, CID 7166 type).
DEFAULT_CATEGORY = Code("85756007", "SCT", "Tissue")
DEFAULT_TYPE = Code("85756007", "SCT", "Tissue")


def exported_labels(segmentation: Segmentation) -> list[Label]:
    """Labels present in the map, in index order; indices missing from the table get a name.

    Labels listed in the table but absent from the map are left out (a DICOM segment or ROI
    must hold something); indices present but unnamed become ``label_<index>`` with a warning.
    """
    present = segmentation.present_indices()
    out = []
    for index in present:
        if index in segmentation.labels:
            out.append(segmentation.labels[index])
        else:
            log.warning("label %d occurs in the map but not in the label table; exporting it as label_%d",
                        index, index)
            out.append(Label(index, f"label_{index}", default_color(index)))
    return out


def codes_of(label: Label) -> tuple[Code, Code]:
    """(category, type) codes of a label: its own, else the SNOMED CT codes medseg knows for its
    name (:func:`medseg.core.labels.known_codes`: liver, spleen, ...), else SNOMED CT Tissue/Tissue."""
    if label.code is None:
        from medseg.core.labels import known_codes

        code, category = known_codes(label.name)
        if code is not None:
            return label.category or category, code
    return label.category or DEFAULT_CATEGORY, label.code or DEFAULT_TYPE


def safe_name(text: str, max_len: int = 60) -> str:
    """File-system-safe version of ``text`` (letters, digits, ``-_.``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return (s or "unnamed")[:max_len]


def now_dicom() -> tuple[str, str]:
    """Current UTC (DA, TM) strings."""
    t = datetime.now(timezone.utc)
    return t.strftime("%Y%m%d"), t.strftime("%H%M%S")
