"""medseg's napari plugin (import package ``medseg_napari``).

Everything is declared in ``napari.yaml`` (npe2) and imported lazily: importing this package
imports neither napari nor Qt. Conversions between medseg volumes and napari layers live in
:mod:`medseg_napari._layers`; label-editing maths in :mod:`medseg.core.editing`.
"""

from __future__ import annotations

__all__: list[str] = []
