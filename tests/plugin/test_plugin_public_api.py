"""The plugin uses only the public API of napari, vispy, superqt and Qt (no private names, no
monkeypatching, no garbage-collector tricks).

An AST scan of every module of ``napari_plugin/`` (not a grep: docstrings and comments may
name private things, and the plugin's own private helpers are fine):

* imports of a private module or name of a dependency (``napari._qt...``, ``from vispy.x import _y``);
* ``obj._name`` attribute access (and ``getattr``/``setattr``/``hasattr`` with a ``"_name"``
  literal) on anything but ``self``/``cls``, unless ``_name`` is a private name the plugin
  itself defines (its own functions, classes and attributes);
* keyword arguments with a leading underscore (superqt's ``_start_thread=``...);
* assignments to an attribute of an imported dependency module (monkeypatching);
* ``gc.freeze``/``unfreeze``/``callbacks``/``disable``/``set_threshold``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[2] / "napari_plugin"
DEPENDENCIES = {"napari", "vispy", "superqt", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui",
                "app_model", "npe2"}
GC_TRICKS = {"freeze", "unfreeze", "callbacks", "disable", "set_threshold", "get_freeze_count"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def own_private_names(trees: list[ast.AST]) -> set[str]:
    """Private names the plugin defines: functions, classes, module globals, ``self._x`` attributes."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _private(node.name):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and _private(node.id):
                names.add(node.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _private(node.attr)
                  and isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}):
                names.add(node.attr)
    return names


def violations(tree: ast.AST, own: set[str], filename: str = "<src>") -> list[str]:
    """Every use of a dependency's private API (or a gc trick, or a monkeypatch) in ``tree``."""
    found: list[str] = []
    dep_modules: set[str] = set()  # local names bound to dependency modules

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] in DEPENDENCIES:
                    dep_modules.add(alias.asname or parts[0])
                    if any(_private(p) for p in parts):
                        report(node, f"import of private module {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] in DEPENDENCIES:
                if any(_private(p) for p in parts):
                    report(node, f"import from private module {node.module}")
                for alias in node.names:
                    if _private(alias.name):
                        report(node, f"import of private name {node.module}.{alias.name}")
                    dep_modules.add(alias.asname or alias.name)
            elif parts[0] == "gc":
                for alias in node.names:
                    if alias.name in GC_TRICKS:
                        report(node, f"gc.{alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = node.value
            if isinstance(base, ast.Name) and base.id == "gc" and node.attr in GC_TRICKS:
                report(node, f"gc.{node.attr}")
            if _private(node.attr) and node.attr not in own and not (
                    isinstance(base, ast.Name) and base.id in {"self", "cls"}):
                report(node, f"private attribute .{node.attr}")
            root = base
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(node.ctx, (ast.Store, ast.Del)) and isinstance(root, ast.Name) and root.id in dep_modules:
                report(node, f"monkeypatch of {ast.unparse(node)}")
        elif isinstance(node, ast.Call):
            fn = node.func
            if isinstance(fn, ast.Name) and fn.id in {"getattr", "setattr", "hasattr", "delattr"} \
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                    and isinstance(node.args[1].value, str) and _private(node.args[1].value) \
                    and node.args[1].value not in own:
                report(node, f"{fn.id}(..., {node.args[1].value!r})")
            if isinstance(fn, ast.Name) and fn.id == "setattr" and node.args \
                    and isinstance(node.args[0], ast.Name) and node.args[0].id in dep_modules:
                report(node, f"monkeypatch of {node.args[0].id} through setattr")
            for kw in node.keywords:
                if kw.arg and _private(kw.arg):
                    report(node, f"private keyword argument {kw.arg}=")
    return found


def _plugin_trees() -> dict[str, ast.AST]:
    return {p.name: ast.parse(p.read_text(encoding="utf-8"), filename=str(p)) for p in sorted(PLUGIN.glob("*.py"))}


def test_plugin_uses_public_api_only():
    trees = _plugin_trees()
    assert len(trees) >= 10, f"plugin modules not found in {PLUGIN}"
    own = own_private_names(list(trees.values()))
    problems = [v for name, tree in trees.items() for v in violations(tree, own, name)]
    assert problems == [], "private names of napari/vispy/superqt/Qt or gc tricks:\n" + "\n".join(problems)


@pytest.mark.parametrize("snippet", [
    "import napari._qt.qt_viewer as m",
    "from napari._qt.qt_viewer import create_vispy_layer",
    "from vispy.visuals.line import dash_atlas\nx = dash_atlas._make_pattern",
    "def f(layer):\n    return layer._type_string",
    "def f(emitter, cb):\n    emitter._callbacks.insert(0, cb)",
    "def f(viewer):\n    return viewer.window._qt_viewer",
    "def f(font):\n    return getattr(font, '_glyphs')",
    "import gc\ngc.freeze()",
    "import gc\ngc.callbacks.append(print)",
    "from gc import freeze",
    "from superqt.utils import create_worker\nw = create_worker(print, _start_thread=False)",
    "import napari.qt\nnapari.qt.get_app = None",
    "from vispy import scene\nscene.SceneCanvas = object",
])
def test_scan_catches_private_use(snippet):
    """The scan can fail: each of these (the hacks the plugin used to have) is reported."""
    tree = ast.parse(snippet)
    assert violations(tree, own_private_names([tree])), snippet


@pytest.mark.parametrize("snippet", [
    "class W:\n    def __init__(self):\n        self._x = 1\n    def f(self):\n        return self._x",
    "def _helper():\n    pass\nimport medseg_napari._layers as L\nL._helper()",
    "from medseg_napari._layers import world_to_index",
    "import gc\ngc.collect()",
    "def f(layer):\n    return layer.__class__",
    '"""napari._qt.qt_viewer is private"""',
])
def test_scan_allows_public_and_own_names(snippet):
    tree = ast.parse(snippet)
    assert violations(tree, own_private_names([tree])) == [], snippet
