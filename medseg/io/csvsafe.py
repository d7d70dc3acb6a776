"""CSV writers safe to open in a spreadsheet: text cells cannot become formulas.

A cell beginning with ``=``, ``+``, ``-``, ``@`` (or a tab / carriage return) is run as a
formula by Excel, LibreOffice and Google Sheets ("CSV injection"): a label named
``=cmd|' /C calc'!A0`` in ``stats.csv`` would run a command. Every CSV medseg writes goes
through :func:`writer` / :class:`DictWriter`, which prefix such text cells with a single quote
(the OWASP recommendation; the quote shows the text as typed). Numbers, including negative
ones written as text (``-1.5``, ``-inf``), are left as they are.
"""

from __future__ import annotations

import csv
from typing import Any, Iterable

__all__ = ["escape_cell", "escape_row", "writer", "DictWriter"]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def escape_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would run as a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _is_number(value):
        return "'" + value
    return value


def escape_row(row: Iterable[Any]) -> list[Any]:
    return [escape_cell(v) for v in row]


class _Writer:
    def __init__(self, fh: Any, **kwargs: Any) -> None:
        self._w = csv.writer(fh, **kwargs)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._w.writerow(escape_row(row))

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def writer(fh: Any, **kwargs: Any) -> _Writer:
    """:func:`csv.writer` whose rows are escaped with :func:`escape_cell`."""
    return _Writer(fh, **kwargs)


class DictWriter(csv.DictWriter):
    """:class:`csv.DictWriter` whose values (and header) are escaped with :func:`escape_cell`."""

    def writerow(self, rowdict):  # type: ignore[override]
        return super().writerow({k: escape_cell(v) for k, v in rowdict.items()})

    def writerows(self, rowdicts):  # type: ignore[override]
        for row in rowdicts:
            self.writerow(row)
