"""Warm library caches in the batch fork server, so that every worker forked from it starts warm.

Imported only by the fork server of :mod:`medseg.batch.pool` (its preload list). Without it each
worker fills these caches on its first series: highdicom parses its DICOM standard tables (JSON,
about 0.5 s of CPU) the first time it builds a SEG. Failures are ignored: a worker then fills the
cache itself.
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger(__name__)

with contextlib.suppress(Exception):  # private highdicom helpers: a cache warm-up, never required
    from highdicom import _standard_utils

    for _name in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map"):
        getattr(_standard_utils, _name)()
