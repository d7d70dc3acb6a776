"""Spreadsheet safety: label names cannot become formulas in any CSV medseg writes (issue 18)."""

from __future__ import annotations

import csv

import numpy as np

from medseg.export import export_segmentation
from medseg.io.csvsafe import escape_cell
from medseg.core.labels import LabelTable
from medseg.core.segmentation import Segmentation

EVIL = ["=cmd|' /C calc'!A0", "+SUM(1,2)", "-2+3", "@HYPERLINK(\"x\")", "liver"]


def test_escape_cell_keeps_numbers_and_plain_text():
    assert escape_cell("=1+1") == "'=1+1"
    assert escape_cell("-2+3") == "'-2+3"
    assert escape_cell("-1.5") == "-1.5" and escape_cell("-inf") == "-inf" and escape_cell(-3) == -3
    assert escape_cell("liver") == "liver"


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_stats_csv_escapes_formula_label_names(tmp_path, phantom):
    image, seg = phantom
    table = LabelTable.from_names({i: EVIL[i - 1] for i in range(1, 6)})
    arr = np.asarray(seg.array) % 6
    seg = Segmentation(seg.label_map.with_array(arr.astype(np.uint8)), table)
    export_segmentation(seg, tmp_path / "out", formats="stats", image=image)
    for name in ("stats.csv", "stats_instances.csv"):
        cells = [c for row in _rows(tmp_path / "out" / name) for c in row]
        assert not any(c.startswith(("=", "+", "@")) for c in cells), name
        assert not any(c.startswith("-") and not _number(c) for c in cells), name
        assert "'=cmd|' /C calc'!A0" in cells


def _number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def test_evaluate_csvs_escape_label_names(tmp_path, phantom):
    from medseg.analysis.evaluate import evaluate, write_report

    _, seg = phantom
    table = LabelTable.from_names({i: EVIL[(i - 1) % 5] + str(i) for i in range(1, seg.labels.max_index + 1)})
    seg = Segmentation(seg.label_map, table)
    paths = write_report(evaluate(seg, seg), tmp_path / "qa", plots=False)
    for key in ("per_class_csv", "confusion_csv"):
        cells = [c for row in _rows(paths[key]) for c in row]
        assert not any(c.startswith(("=", "+", "@")) for c in cells), key
