"""Packaging and dependency-boundary checks."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "medseg").rglob("__init__.py")
    }
    missing = found - listed
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"


def test_import_medseg_is_light():
    code = (
        "import sys, medseg, medseg.io, medseg.samples.phantom, medseg.cli\n"
        "import medseg.cli as c; c.build_parser()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch','monai','napari','qtpy','PyQt6','PyQt5','PySide6','magicgui','vispy'})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing medseg pulled in heavy modules: {out.stdout.strip()}"


def test_import_linter_contracts():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
