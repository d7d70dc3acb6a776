"""Exports of a segmentation: label maps, DICOM SEG, RTSTRUCT, STL meshes and statistics.

Every writer is atomic (a reader never sees a half-written file) and never touches the source
images. DICOM objects reference the source series and must lie on its grid; the label map's
geometry is checked against the source headers slice by slice before anything is written.

=============  ========================================  ================================
format         function                                  files
=============  ========================================  ================================
``nifti``      :func:`write_label_map`                   ``labels.nii.gz`` + ``labels.labels.json``
``nrrd``       :func:`write_label_map`                   ``labels.nrrd`` + ``labels.labels.json``
``seg``        :func:`write_dicom_seg`                   ``seg.dcm`` (DICOM SEG)
``rtstruct``   :func:`write_rtstruct`                    ``rtstruct.dcm``
``stl``        :func:`write_stl`                         ``meshes/<index>_<name>.stl`` (LPS mm)
``stats``      :func:`label_statistics` + writer          ``stats.json``, ``stats.csv``, ``stats_instances.csv``
=============  ========================================  ================================
"""

from __future__ import annotations

from medseg.export._common import safe_name
from medseg.export.api import FORMATS, DICOM_FORMATS, export_segmentation, parse_formats
from medseg.export.labelmap import write_label_map
from medseg.export.mesh import label_mesh, write_stl
from medseg.export.rtstruct import rasterize_rtstruct, write_rtstruct
from medseg.export.seg import read_dicom_seg, write_dicom_seg
from medseg.export.stats import label_statistics, write_statistics

__all__ = [
    "safe_name",
    "FORMATS",
    "DICOM_FORMATS",
    "export_segmentation",
    "parse_formats",
    "write_label_map",
    "write_dicom_seg",
    "read_dicom_seg",
    "write_rtstruct",
    "rasterize_rtstruct",
    "write_stl",
    "label_mesh",
    "label_statistics",
    "write_statistics",
]
