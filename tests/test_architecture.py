"""The shape of the code base: sizes, and import-linter contracts that are the documented layers."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted((ROOT / "medseg").rglob("*.py"))


def _name(p: Path) -> str:
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def long_modules(paths: list[Path], limit: int = MAX_MODULE_LINES) -> list[str]:
    """``path (n lines)`` for each file over ``limit`` lines."""
    out = []
    for p in paths:
        n = len(p.read_text().splitlines())
        if n > limit:
            out.append(f"{_name(p)} ({n} lines)")
    return out


def long_functions(paths: list[Path], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``path:line name (n lines)`` for each function or method over ``limit`` lines (decorators
    and docstring included: what a reader has to read)."""
    out = []
    for p in paths:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - start + 1
                if n > limit:
                    out.append(f"{_name(p)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_module_over_600_lines():
    assert not long_modules(_modules()), "split these modules into parts with one job each"


def test_no_function_over_80_lines():
    assert not long_functions(_modules()), "write these functions as named steps"


def test_size_checks_see_what_they_claim(tmp_path):
    """The checks themselves: an 81-line function and a 601-line module are caught, 80 and 600 pass."""
    body = "\n".join(f"    x{i} = {i}" for i in range(79))
    ok = tmp_path / "ok.py"
    ok.write_text(f"@staticmethod\ndef f():\n{body}\n")  # decorator + def + 79 = 81 lines
    assert long_functions([ok]) and "f (81 lines)" in long_functions([ok])[0]
    ok.write_text(f"def f():\n{body}\n")  # 80 lines
    assert long_functions([ok]) == []
    (tmp_path / "big.py").write_text("x = 1\n" * 601)
    (tmp_path / "fits.py").write_text("x = 1\n" * 600)
    assert long_modules([tmp_path / "big.py", tmp_path / "fits.py"]) == [f"{tmp_path / 'big.py'} (601 lines)"]


def documented_layers() -> list[str]:
    """The layers block of docs/ARCHITECTURE.md, top to bottom."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"<!-- layers: start -->\s*```\n(.*?)```\s*<!-- layers: end -->", text, re.S)
    assert block, "docs/ARCHITECTURE.md lost its layers block"
    return [line.strip() for line in block.group(1).strip().splitlines()]


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_import_linter_layers_are_the_documented_arrows():
    layers = [c for c in _contracts() if c["type"] == "layers"]
    assert len(layers) == 1, "one layers contract: the arrows of docs/ARCHITECTURE.md"
    contract = layers[0]
    assert contract["containers"] == ["medseg"]
    got = [" | ".join(sorted(p.strip() for p in layer.split("|"))) for layer in contract["layers"]]
    want = [" | ".join(sorted(p.strip().removeprefix("medseg.") for p in layer.split("|")))
            for layer in documented_layers()]
    assert got == want, "pyproject.toml's layers contract and docs/ARCHITECTURE.md disagree"


def test_every_part_of_medseg_is_in_a_layer():
    """A new top-level package or module must be placed in the architecture, not left outside it."""
    documented = {p.strip().removeprefix("medseg.") for layer in documented_layers() for p in layer.split("|")}
    present = {p.name if p.is_dir() else p.stem for p in (ROOT / "medseg").iterdir()
               if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert present - documented == set(), f"place {sorted(present - documented)} in docs/ARCHITECTURE.md's layers"
    assert documented - present == set(), f"docs/ARCHITECTURE.md names missing parts {sorted(documented - present)}"


def test_the_plugin_contract_forbids_every_private_module():
    """The plugin's arrow ("medseg's public API only") is a forbidden contract; it must name every
    private module, including ones added later."""
    private = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in _modules()
                     if p.name.startswith("_") and p.name != "__init__.py")
    plugin = [c for c in _contracts() if c["type"] == "forbidden" and c["source_modules"] == ["medseg_napari"]]
    assert len(plugin) == 1, "pyproject.toml lost the napari plugin's public-API contract"
    assert sorted(plugin[0]["forbidden_modules"]) == private, "list every medseg._private module in the contract"
    napari_free = [c for c in _contracts() if c["type"] == "forbidden" and c["source_modules"] == ["medseg"]]
    assert napari_free and "medseg_napari" in napari_free[0]["forbidden_modules"]
