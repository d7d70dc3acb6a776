"""Helper processes work from a script without an ``if __name__ == "__main__":`` guard."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from pathlib import Path

from medseg.parallel import main_is_guarded

SCRIPT = """
import numpy as np
from medseg.core.labels import LabelTable
from medseg.core.segmentation import Segmentation
from medseg.core.volume import Volume
from medseg_napari._export import label_statistics_rows
from medseg.parallel import run_in_process

arr = np.zeros((4, 8, 8), np.uint8)
arr[1:3, 2:6, 2:6] = 1
seg = Segmentation(Volume(arr, np.eye(4)), LabelTable.from_names(["liver"]))
rows = run_in_process(label_statistics_rows, seg)
print("voxels", rows[0]["voxels"])
"""


def _module(tmp_path: Path, source: str, name: str = "script.py") -> types.ModuleType:
    p = tmp_path / name
    p.write_text(textwrap.dedent(source))
    m = types.ModuleType("__main__")
    m.__file__ = str(p)
    return m


def test_main_guard_detection(tmp_path: Path):
    assert not main_is_guarded(_module(tmp_path, "x = 1\n"))
    assert main_is_guarded(_module(tmp_path, "def main():\n    pass\nif __name__ == '__main__':\n    main()\n"))
    assert main_is_guarded(_module(tmp_path, "if '__main__' == __name__:\n    pass\n"))
    interactive = types.ModuleType("__main__")  # a notebook or the REPL: no file
    assert main_is_guarded(interactive)


def test_unguarded_script_runs_helper_work_in_a_thread(tmp_path: Path):
    """Before: multiprocessing's bootstrapping RuntimeError; now the work runs in the caller."""
    script = tmp_path / "unguarded.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "voxels 32" in out.stdout
