"""Size limits of the interactive package: no module over 600 lines, no function over 80.

The split of the training-free engine into stages (issue 20) keeps each piece readable; this
test keeps it so. (medseg/interactive only: the other parts have their own owners.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import medseg.interactive

PACKAGE = Path(medseg.interactive.__file__).parent
FILES = sorted(PACKAGE.glob("*.py")) + [PACKAGE.parent / "prompts.py", PACKAGE.parent / "intensity.py"]


def test_no_module_over_600_lines():
    long = {p.name: n for p in FILES if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"modules over 600 lines: {long}"


def test_no_function_over_80_lines():
    long = {}
    for p in FILES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long[f"{p.name}:{node.name}"] = n
    assert not long, f"functions over 80 lines: {long}"


def test_the_training_free_engine_stages_are_short():
    from medseg.interactive import classical_stages

    tree = ast.parse(Path(classical_stages.__file__).read_text())
    long = {n.name: n.end_lineno - n.lineno + 1 for n in tree.body
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 62}
    assert not long, f"stage functions over ~60 lines: {long}"
