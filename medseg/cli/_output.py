"""The output policy on the command line: ``--overwrite`` and the checks run before any work.

See :mod:`medseg.io.output_policy`. Commands check their outputs *before* reading and
computing, so a refused output costs nothing, and run under
:func:`~medseg.io.output_policy.protect_inputs` so that no file they write can land on an input.
"""

from __future__ import annotations

import argparse

__all__ = ["add_overwrite"]


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    """Add ``--overwrite`` (replace existing outputs; inputs are never overwritten)."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing outputs (inputs are never written, with or without this)")
