"""medseg: medical image segmentation with one geometry convention.

Importing this package is cheap: it never imports torch, MONAI, napari or Qt, changes no
environment variable and downloads nothing. Submodules load their heavy dependencies on use.

Core types are re-exported here; see :mod:`medseg.io` for reading and writing scans.
"""

from __future__ import annotations

from medseg.core.errors import MedsegError
from medseg.core.labels import Code, Label, LabelTable
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume

__all__ = ["Volume", "Segmentation", "Label", "LabelTable", "Code", "MedsegError", "__version__"]
__version__ = "0.1.0"
