"""The training-free engine's stages stay short (about 60 lines each).

The split into stages (issue 20) keeps each piece readable; this test keeps it so. The limits
for all of medseg (600 lines a module, 80 a function) are in tests/test_architecture.py.
"""

from __future__ import annotations

import ast
from pathlib import Path


def test_the_training_free_engine_stages_are_short():
    from medseg.interactive import classical_stages

    tree = ast.parse(Path(classical_stages.__file__).read_text())
    long = {n.name: n.end_lineno - n.lineno + 1 for n in tree.body
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 62}
    assert not long, f"stage functions over ~60 lines: {long}"
