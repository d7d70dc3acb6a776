"""Mutation testing of the core modules on a budget, with cosmic-ray (``pip install -e .[mutation]``).

Usage::

    python benchmarks/mutation.py [--budget 20] [--modules geometry,metrics] [--named-only]
                                  [--no-named] [--json out.json] [--list]

For each core module (table ``MODULES`` below) the script asks cosmic-ray for every mutant of
the module (all its operators: number, comparison, binary/unary operator, boolean, ``not``,
break/continue, zero-iteration loop, exception and decorator mutants), picks ``--budget`` of them
deterministically and runs the module's own test files against each, one mutant at a time,
through cosmic-ray's ``mutate_and_test`` (the file is mutated in place and restored after each
run; ``PYTHONDONTWRITEBYTECODE`` is set so no stale bytecode survives).

The sample is the same from run to run and across edits elsewhere in the module: a mutant's
identity is its module, function, operator and the text of the mutated source line (not its
line number); mutants are hashed on that identity, sorted by hash within each operator family
and taken round-robin over the families, so the rare families (comparison, boolean, ``not``)
are not drowned by the many binary-operator mutants.

The issue's *named* mutants (``NAMED``: hand-written edits, e.g. deleting a cleanup block, that
cosmic-ray's operators do not make) are run as well unless ``--no-named``; each names the test
that must kill it.

Printed per module: killed / survived / excluded-equivalent / score = killed / (killed +
survived), and each survivor with its diff. Equivalent mutants (``EQUIVALENT``: no test can
tell them apart from the original) are excluded by identity hash, each with its reason.

The module is mutated in place: do not run tests, or a second copy of this script, in the same
checkout while it runs. CI does not run it (minutes per module); the weekly/manual workflow
runs it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: module key -> (path, its own test files, functions to mutate or None for all)
MODULES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...] | None]] = {
    "geometry": ("medseg/core/geometry.py",
                 ("tests/test_geometry_roundtrip.py", "tests/test_core.py", "tests/test_geometry_properties.py"),
                 None),
    "volume": ("medseg/core/volume.py",
               ("tests/test_core.py", "tests/test_geometry_roundtrip.py", "tests/test_geometry_properties.py"),
               None),
    "dicom_geometry": ("medseg/io/dicom/_geometry.py",
                       ("tests/io/test_dicom_read.py", "tests/io/test_dicom_stack_properties.py"), None),
    "nifti": ("medseg/io/nifti.py",
              ("tests/test_geometry_roundtrip.py", "tests/io/test_nifti_broken.py", "tests/test_core.py",
               "tests/io/test_conversions.py"), None),
    "itk": ("medseg/io/itk.py",
            ("tests/test_geometry_roundtrip.py", "tests/test_core.py", "tests/io/test_conversions.py"), None),
    "metrics": ("medseg/analysis/metrics.py", ("tests/qa/test_metrics.py",), None),
    "consensus": ("medseg/analysis/consensus.py", ("tests/qa/test_consensus.py",), None),
    "atomic": ("medseg/io/atomic.py", ("tests/io/test_atomic.py", "tests/batch/test_batch.py"), None),
    "batch_runner": ("medseg/batch/runner.py",
                     ("tests/batch/test_batch.py", "tests/batch/test_crash_and_parallel.py", "tests/batch/test_pool.py"),
                     # the output-path part of the runner (the model/pool/Dask set-up is covered elsewhere)
                     ("_clean_stale", "_is_done", "run_batch", "_discover", "found_one", "finished", "crashed",
                      "_summary", "_write_summary", "_crash_record")),
    "box_prompt": ("medseg/interactive/box_prompt.py", ("tests/interactive/test_box_prompt.py",), None),
}


@dataclass(frozen=True)
class Named:
    """A hand-written mutant from the issue: replace ``old`` (exactly once in the module) by ``new``."""

    module: str
    what: str
    old: str
    new: str
    test: str  # the test that must kill it


NAMED: tuple[Named, ...] = (
    Named("geometry", "spacing check `or` -> `and` lets a negative spacing through",
          "spacing.shape != (3,) or np.any(spacing <= 0) or not np.all(np.isfinite(spacing))",
          "spacing.shape != (3,) and np.any(spacing <= 0) and not np.all(np.isfinite(spacing))",
          "tests/test_geometry_properties.py::test_make_affine_refuses_a_non_positive_spacing"),
    Named("geometry", "same_grid tolerance 1e-3 -> 1.001 mm",
          "    atol: float = 1e-3,\n) -> bool:", "    atol: float = 1.001,\n) -> bool:",
          "tests/test_geometry_properties.py::test_same_grid_tells_grids_a_fraction_of_a_mm_apart"),
    Named("volume", "Volume.same_grid tolerance 1e-3 -> 1.001 mm",
          "def same_grid(self, other: \"Volume\", *, atol: float = 1e-3)",
          "def same_grid(self, other: \"Volume\", *, atol: float = 1.001)",
          "tests/test_geometry_properties.py::test_same_grid_tells_grids_a_fraction_of_a_mm_apart"),
    Named("dicom_geometry", "gap fill copies slice hi + 1 instead of hi - 1",
          "            sources.append([(hi - 1, 1.0)])", "            sources.append([(hi + 1, 1.0)])",
          "tests/io/test_dicom_stack_properties.py::test_gap_fill_copies_the_acquired_slice_at_each_grid_position"),
    Named("dicom_geometry", "tilt tolerance 0.01 -> 1.01 deg squares off sub-degree tilts",
          "_TILT_TOL_DEG = 0.01", "_TILT_TOL_DEG = 1.01",
          "tests/io/test_dicom_stack_properties.py::test_sub_degree_tilt_is_kept_in_the_affine"),
    Named("dicom_geometry", "PixelSpacing tolerance 1e-4 -> 1.0001 (mixed spacing accepted)",
          "> 1e-4 * max(float(ps[0].max()), 1.0)", "> 1.0001 * max(float(ps[0].max()), 1.0)",
          "tests/io/test_dicom_stack_properties.py::test_mixed_pixel_spacing_is_refused"),
    Named("dicom_geometry", "tilt + gap: resampled affine loses the tilt",
          "(u if tilt_deg else normal * float(u @ normal))", "(u if not tilt_deg else normal * float(u @ normal))",
          "tests/io/test_dicom_stack_properties.py::test_tilt_with_a_gap_keeps_the_tilt"),
    Named("dicom_geometry", "single slice ignores SliceThickness (z spacing 1 mm)",
          "step = im.spacing_between_slices or im.slice_thickness",
          "step = im.spacing_between_slices and im.slice_thickness",
          "tests/io/test_dicom_stack_properties.py::test_single_slice_z_spacing_from_its_headers"),
    Named("metrics", "volume_difference_pct sign flipped",
          "\"volume_difference_pct\": 100.0 * (v_pred - v_ref) / v_ref",
          "\"volume_difference_pct\": 100.0 * (v_ref - v_pred) / v_ref",
          "tests/qa/test_metrics.py::test_volume_difference_is_prediction_minus_reference"),
    Named("metrics", "volume_difference_pct divides by the prediction",
          "\"volume_difference_pct\": 100.0 * (v_pred - v_ref) / v_ref",
          "\"volume_difference_pct\": 100.0 * (v_pred - v_ref) / v_pred",
          "tests/qa/test_metrics.py::test_volume_difference_is_prediction_minus_reference"),
    Named("metrics", "average_surface_distance returns None",
          "        return math.nan\n    return float(both.mean())\n\n\ndef surface_dice",
          "        return math.nan\n    return None\n\n\ndef surface_dice",
          "tests/qa/test_metrics.py::test_average_surface_distance_known_value"),
    Named("consensus", "single-label STAPLE runs on label 1 whatever the label",
          "l = present[0] if present else 1", "l = 1",
          "tests/qa/test_consensus.py::test_single_label_consensus_keeps_its_label"),
    Named("consensus", "probability map channels swapped",
          "probs = np.stack([1.0 - res.probability, res.probability])",
          "probs = np.stack([res.probability, 1.0 - res.probability])",
          "tests/qa/test_consensus.py::test_probability_map_values_and_channels"),
    Named("consensus", "probability map negated",
          "                full[c] = probs[prob_labels.index(l)]", "                full[c] = -probs[prob_labels.index(l)]",
          "tests/qa/test_consensus.py::test_probability_map_values_and_channels"),
    Named("consensus", "probability map left zero",
          "            if l in prob_labels:\n", "            if l not in prob_labels:\n",
          "tests/qa/test_consensus.py::test_probability_map_values_and_channels"),
    Named("consensus", "probability channels not in label-table order",
          "chan = [0] + table.indices", "chan = [0] + sorted(table.indices, reverse=True)",
          "tests/qa/test_consensus.py::test_probability_map_values_and_channels"),
    Named("consensus", "label >= 256 stored as uint8 (wraps to 0)",
          "np.uint8 if l < 256 else np.uint16", "np.uint8 if l <= 256 else np.uint16",
          "tests/qa/test_consensus.py::test_labels_from_256_up_survive_consensus"),
    Named("atomic", "no cleanup of the temporary file on an exception",
          "        if tmp_path.exists():\n            tmp_path.unlink()", "        pass",
          "tests/io/test_atomic.py::test_an_exception_leaves_no_temporary_file_and_the_target_untouched"),
    Named("batch_runner", "cancelled multi-worker batch reports itself complete",
          "check_cancel(lambda: True, \"batch\")", "check_cancel(lambda: False, \"batch\")",
          "tests/batch/test_batch.py::test_cancelled_multi_worker_batch_raises_cancelled"),
    Named("batch_runner", "summary.json swaps the study and output folders",
          "\"study_dir\": str(study), \"out_dir\": str(out)", "\"study_dir\": str(out), \"out_dir\": str(study)",
          "tests/batch/test_batch.py::test_summary_names_the_study_and_output_folders"),
    Named("batch_runner", "a cancel during discovery lists published series as not run",
          "found = run.found or Discovery(tasks=sorted(run.known, key=lambda t: t.id))",
          "found = run.found or Discovery()",
          "tests/batch/test_batch.py::test_cancel_while_the_study_is_scanned_still_records_published_series"),
    Named("batch_runner", "a cancel during discovery kills the series the pool already took",
          "            pool.stop()\n            run_pool(pool, run.finished, run.crashed, series_progress, None)\n",
          "            pass\n",
          "tests/batch/test_batch.py::test_cancel_while_the_study_is_scanned_still_records_published_series"),
    Named("batch_runner", "stale .partial files no longer removed",
          "p.name.startswith(\".\") and \".partial\" in p.name", "p.name.startswith(\".\") and \".partial\" not in p.name",
          "tests/batch/test_batch.py::test_stale_partial_files_are_removed"),
)

#: identity hash (first 10 hex) -> reason: mutants no test can distinguish from the original
EQUIVALENT: dict[str, str] = {
    "01555c9f5b": "box_prompt.limit_to_box_plane `roi & (jj >= ...)` -> `roi * (jj >= ...)`: the product of two "
                  "bool arrays is their logical and, a bool array",
    "016e7410f4": "box_prompt.limit_to_box_plane `reshape(-1, 3)` -> `reshape(~1, 3)`: numpy takes any negative "
                  "size as the one inferred axis",
    "0c57bf8498": "box_prompt.limit_to_box_plane `reshape(-1, 3)` -> `reshape(-2, 3)`: as above",
    "bbea33082f": "box_prompt.limit_to_box_plane `reshape(-1, 3)` -> `reshape(~1, 3)` (positive clicks): as above",
    "9b687753dd": "box_prompt.as_click_prompts `reshape(-1, 3)` -> `reshape(~1, 3)` (negatives): as above",
    "be9c12c75a": "box_prompt.as_click_prompts `reshape(-1, 3)` -> `reshape(~1, 3)` (positives): as above",
    "0f973b46d1": "box_prompt.limit_to_box_plane `&` -> `//` between two bool arrays: 1 // 1 = 1, 0 // 1 = 0, "
                  "x // 0 = 0 (numpy's integer rule): their logical and",
    "10e5d69be6": "box_prompt.limit_to_box_plane `&` -> `*` between two bool arrays: their logical and",
    "176ecce0e9": "box_prompt.limit_to_box_plane `&` -> `*` between two bool arrays: their logical and",
    "4ad4312978": "box_prompt.as_click_prompts `reshape(-1, 3)` -> `reshape(-2, 3)` (negatives): any negative size "
                  "is numpy's inferred axis",
    "46e66e82a6": "box_prompt.limit_to_box_plane `&` -> `//` between two bool arrays: their logical and (as above)",
    "b0a9748f36": "box_prompt.choose_box_click `len(cands) == 1` -> `<= 1`: there is always a candidate (an empty "
                  "list fails at cands[0] either way)",
    "a7e136a16a": "box_prompt.choose_box_click `return cands[0]` -> `cands[-1]` under `len(cands) == 1`: the same "
                  "element",
    "31b681f059": "box_prompt.ridge_clicks `(lo + hi) // 2` -> `int((lo + hi) / 2)`: the same for slice indices >= 0",
    "6b5a4cd324": "box_prompt.clicked_object_box no negatives as `zeros((0, 3))` -> `zeros((0, 4))`: empty either way",
    "16d7a88497": "box_prompt.ridge_pixels `dist == dist.max()` -> `>=`: nothing exceeds the maximum",
    "194fb1b172": "box_prompt.clicked_object_box no negatives as `zeros((0, 3))` -> `zeros((0, 2))`: an empty array "
                  "either way (the engine reshapes it to (0, 3))",
    "9085f5d143": "geometry.direction_of `keepdims=True` -> False: the column norms of a (3, 3) matrix, shape (3,), "
                  "broadcast over the columns exactly as shape (1, 3) does",
    "0d2b553fae": "nifti.volume_from_nibabel `data.shape[3] == 1` -> `<= 1`: differs only for a 4th axis of length 0, "
                  "an empty image refused either way (IndexError instead of InputError)",
    "1c05c69fba": "metrics._edges: no iteration of the bounding-box loop leaves the slice empty, so the whole array "
                  "is used instead of its crop: same surfaces, only slower",
    "0e01a3eed4": "metrics.confusion_matrix LUT fill -1 -> ~1 (= -2): both mark 'not a counted label' and are "
                  "dropped alike by `keep = (r >= 0) & (p >= 0)`",
    "53098a1e3c": "consensus._sitk_run `cancel is not None and cancel()` -> `or` inside on_progress: SimpleITK's "
                  "STAPLE filters send no progress events (checked: 0 calls), so on_progress never runs",
    "8d3f597c06": "consensus._sitk_run `except RuntimeError` -> another exception: the RuntimeError it converts comes "
                  "from filt.Abort(), which only on_progress calls, and on_progress never runs (no ITK events)",
    "63fa3997a4": "consensus._sitk_run `progress is not None or cancel is not None` -> `and`: only decides whether "
                  "on_progress is attached, and SimpleITK's STAPLE filters never call it (progress is reported "
                  "around the call instead)",
    "0194109f66": "batch.runner.run_batch `config.workers > 1` -> `!= 1`: BatchConfig refuses workers < 1",
    "1730e931d3": "batch.runner.run_batch `config.workers > 1` -> `!= 1` (the line as it reads "
                  "now, `... and not config.scheduler`): BatchConfig refuses workers < 1",
    "294d875125": "batch.runner._write_summary `json.dumps(indent=2)` -> `indent=3`: whitespace only, the same JSON",
    "0f22a5570e": "batch.runner._summary `round(wall, 3)` -> another number of decimals: only the printed precision "
                  "of the run's wall time changes, nothing reads it",
    "4289bd8a80": "batch.runner._write_summary `r.get(\"resumed\", False)` -> default True: every record has "
                  "\"resumed\" (set by found_one or finished), so the default is never used",
    "1c6cf2e974": "batch.runner._summary `round(wall, 3)`, the other number of decimals (as 0f22a5570e)",
    "0295f7ec57": "_geometry.plan_stack `hi > 0` -> `hi >= 0` in the gap fill: hi == 0 only for the first grid "
                  "point tg = 0 = t[0], which the branch before it always copies",
}


@dataclass
class Mutant:
    key: str
    ident: str
    family: str
    spec: object  # cosmic_ray MutationSpec
    line: str


def _family(operator_name: str) -> str:
    name = operator_name.split("/")[-1]
    for stem in ("ReplaceBinaryOperator", "ReplaceComparisonOperator", "ReplaceUnaryOperator", "NumberReplacer"):
        if name.startswith(stem):
            return stem
    return name


def _annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of every type annotation: never evaluated here
    (``from __future__ import annotations``), so a mutant inside one is equivalent."""
    import ast

    spans = []
    for node in ast.walk(ast.parse(source)):
        anns = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            anns.append(node.returns)
        elif isinstance(node, ast.arg):
            anns.append(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            anns.append(node.annotation)
        for a in anns:
            if a is not None:
                spans.append(((a.lineno, a.col_offset), (a.end_lineno, a.end_col_offset)))
    return spans


def all_mutants(key: str) -> list[Mutant]:
    """Every cosmic-ray mutant of one module (restricted to its listed functions), less those
    inside type annotations."""
    from cosmic_ray.commands import init
    from cosmic_ray.work_db import WorkDB, use_db

    path, _tests, functions = MODULES[key]
    source = (ROOT / path).read_text()
    lines = source.splitlines()
    spans = _annotation_spans(source)
    with tempfile.TemporaryDirectory() as tmp:
        with use_db(str(Path(tmp) / "session.sqlite"), WorkDB.Mode.create) as db:
            init([ROOT / path], db, {})
            items = list(db.work_items)
    out: list[Mutant] = []
    seen: collections.Counter = collections.Counter()
    for item in items:
        spec = item.mutations[0]
        defn = (spec.definition_name or "").split(".")[-1]
        if functions is not None and defn not in functions:
            continue
        if any(a <= tuple(spec.start_pos) < b for a, b in spans):
            continue
        line = lines[spec.start_pos[0] - 1].strip()
        base = f"{path}|{defn}|{spec.operator_name}|{line}|{spec.start_pos[1]}"
        seen[base] += 1
        ident = hashlib.sha1(f"{base}|{seen[base]}".encode()).hexdigest()[:10]
        out.append(Mutant(key, ident, _family(spec.operator_name), spec, line))
    return out


def _compiles(m: Mutant) -> bool:
    """False for the mutants cosmic-ray makes of non-operators (a keyword-only ``*``, a ``**``
    unpacking: syntax errors, not program variants) and for those it cannot apply."""
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.plugins import get_operator

    source = (ROOT / MODULES[m.key][0]).read_text()
    try:
        code = mutate_code(source, get_operator(m.spec.operator_name)(**m.spec.operator_args), m.spec.occurrence)
    except Exception:  # noqa: BLE001 - cosmic-ray cannot apply it (e.g. ExceptionReplacer on a dotted name)
        return False
    if code is None:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. `is` with a literal: a valid (if odd) program
            compile(code, str(m.spec.module_path), "exec")
    except SyntaxError:
        return False
    return True


def sample(mutants: list[Mutant], budget: int) -> list[Mutant]:
    """``budget`` mutants, round-robin over operator families, each family in identity-hash order
    (mutants that are syntax errors are skipped)."""
    fams: dict[str, list[Mutant]] = collections.defaultdict(list)
    for m in mutants:
        fams[m.family].append(m)
    queues = [sorted(v, key=lambda m: m.ident) for _, v in sorted(fams.items())]
    picked: list[Mutant] = []
    while len(picked) < budget and any(queues):
        for q in queues:
            while q and len(picked) < budget:
                m = q.pop(0)
                if _compiles(m):
                    picked.append(m)
                    break
    return picked


def test_command(key: str, tests: tuple[str, ...] | None = None) -> str:
    files = [t for t in (tests or MODULES[key][1]) if (ROOT / t.split("::")[0]).exists()]
    return f"{sys.executable} -m pytest -x -q -p no:cacheprovider -W ignore " + " ".join(files)


def _clear_bytecode(path: Path) -> None:
    for pyc in (path.parent / "__pycache__").glob(path.stem + ".*.pyc"):
        pyc.unlink(missing_ok=True)


def run_mutant(m: Mutant, timeout: float) -> tuple[str, str]:
    from cosmic_ray.mutating import mutate_and_test

    path = ROOT / MODULES[m.key][0]
    _clear_bytecode(path)
    with contextlib.chdir(ROOT):
        res = mutate_and_test([m.spec], test_command(m.key), timeout)
    _clear_bytecode(path)
    if res.worker_outcome.value == "no-test":
        return "no-test", ""
    if res.test_outcome is None:
        return "error", res.output or ""
    return ("survived" if res.test_outcome.value == "survived" else "killed"), res.diff or ""


def run_named(n: Named, timeout: float) -> str:
    import subprocess

    path = ROOT / MODULES[n.module][0]
    original = path.read_bytes()
    text = original.decode()
    if text.count(n.old) != 1:
        return f"not-applicable (found {text.count(n.old)} times)"
    try:
        _clear_bytecode(path)
        path.write_text(text.replace(n.old, n.new))
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        files = [t for t in MODULES[n.module][1] if (ROOT / t).exists()]
        try:
            r = subprocess.run(test_command(n.module, tuple(files)).split(), cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=timeout)
            if r.returncode == 0:
                return "survived"
            failed = [ln.split(" ")[1] for ln in r.stdout.splitlines() if ln.startswith("FAILED ")]
            return "killed by " + (", ".join(failed) or f"exit {r.returncode}")
        except subprocess.TimeoutExpired:
            return "killed (timeout)"
    finally:
        path.write_bytes(original)
        _clear_bytecode(path)


def baseline(key: str) -> float:
    import subprocess

    t0 = time.perf_counter()
    r = subprocess.run(test_command(key).split(), cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{key}: the tests fail without any mutant:\n{r.stdout[-3000:]}")
    return time.perf_counter() - t0


def _read_outcomes(path: Path) -> dict[str, dict[str, str]]:
    """module -> {mutant id: outcome} from a ``--json`` file or a saved printout of this script."""
    import re

    if path.suffix == ".json":
        data = json.loads(path.read_text())
        return {k: {m["id"]: m["outcome"] for m in v["mutants"]} for k, v in data["modules"].items() if v["mutants"]}
    out: dict[str, dict[str, str]] = {}
    key = None
    for line in path.read_text().splitlines():
        head = re.match(r"^== (\w+) ", line)
        if head:
            key = head.group(1)
            out.setdefault(key, {})
        hit = re.match(r"^  ([0-9a-f]{10}) (killed|survived|equivalent|no-test|error)\b", line)
        if hit and key:
            out[key][hit.group(1)] = hit.group(2)
    return {k: v for k, v in out.items() if v}


def report(paths: list[Path], budget: int) -> None:
    """Score table of saved runs, restricted to today's sample of ``budget`` mutants per module and
    with today's ``EQUIVALENT`` list applied to all of them."""
    runs = {}
    for p in paths:
        for key, outcomes in _read_outcomes(p).items():
            runs.setdefault(key, {}).update(outcomes)
    print("module           killed  survived  equivalent  score")
    for key in MODULES:
        if key not in runs:
            continue
        chosen = {m.ident for m in sample(all_mutants(key), budget)}
        missing = chosen - set(runs[key])
        if missing:
            print(f"{key}: {len(missing)} sampled mutant(s) not in these runs: {sorted(missing)}")
        c = collections.Counter("equivalent" if i in EQUIVALENT else o for i, o in runs[key].items() if i in chosen)
        k, s = c["killed"], c["survived"]
        print(f"{key:15s} {k:7d} {s:9d} {c['equivalent']:11d}  {100 * k / (k + s) if k + s else float('nan'):5.1f} %")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budget", type=int, default=20, help="sampled mutants per module")
    ap.add_argument("--modules", default=",".join(MODULES), help="comma-separated keys of MODULES")
    ap.add_argument("--named-only", action="store_true", help="run only the issue's named mutants")
    ap.add_argument("--no-named", action="store_true")
    ap.add_argument("--part", default="1/1", help="run only part i of n of each module's sample (i/n), e.g. to "
                    "split a slow module over two checkouts")
    ap.add_argument("--skip", default="", help="comma-separated mutant ids already run (resume a stopped run)")
    ap.add_argument("--list", action="store_true", help="list the sampled mutants and exit")
    ap.add_argument("--json", type=Path, help="write every result here")
    ap.add_argument("--report", type=Path, nargs="+", help="print the score table of saved runs (--json files or "
                    "printouts) with the current EQUIVALENT list, and exit")
    args = ap.parse_args(argv)
    if args.report:
        report(args.report, args.budget)
        return 0
    keys = [k for k in args.modules.split(",") if k]
    # the module's own tests need no third-party pytest plugin; not loading them (napari's npe2,
    # pytest-qt) saves ~10 s per run. Hypothesis works without its plugin.
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    os.environ["MEDSEG_HYPOTHESIS_PROFILE"] = "mutation"  # a failing property is reported, not shrunk
    results: dict = {"budget": args.budget, "modules": {}, "named": []}
    rows = []
    for key in keys:
        mutants = all_mutants(key)
        chosen = sample(mutants, args.budget)
        part, parts = (int(v) for v in args.part.split("/"))
        chosen = [m for m in chosen if m.ident not in set(args.skip.split(","))][part - 1::parts]
        if args.list:
            for m in chosen:
                print(f"{key:15s} {m.ident} {m.family:28s} {m.spec.operator_name.split('/')[-1]:40s} "
                      f"L{m.spec.start_pos[0]}: {m.line}")
            continue
        base_s = baseline(key)
        timeout = 3 * base_s + 15
        print(f"\n== {key} ({MODULES[key][0]}): {len(mutants)} mutants, {len(chosen)} sampled; "
              f"tests {base_s:.1f} s: {test_command(key).split('cacheprovider -W ignore ')[1]}", flush=True)
        counts = collections.Counter()
        survivors = []
        mod = {"path": MODULES[key][0], "total_mutants": len(mutants), "mutants": []}
        if not args.named_only:
            for m in chosen:
                if m.ident in EQUIVALENT:
                    counts["equivalent"] += 1
                    outcome, diff = "equivalent", EQUIVALENT[m.ident]
                else:
                    outcome, diff = run_mutant(m, timeout)
                    counts[outcome] += 1
                mod["mutants"].append({"id": m.ident, "operator": m.spec.operator_name, "line": m.spec.start_pos[0],
                                       "source": m.line, "outcome": outcome, "diff": diff})
                if outcome == "survived":
                    survivors.append((m, diff))
                print(f"  {m.ident} {outcome:10s} L{m.spec.start_pos[0]:<4d} "
                      f"{m.spec.operator_name.split('/')[-1]}: {m.line[:70]}", flush=True)
            k, s = counts["killed"], counts["survived"]
            score = k / (k + s) if k + s else float("nan")
            mod.update(killed=k, survived=s, equivalent=counts["equivalent"], other=counts["no-test"] + counts["error"],
                       score=score)
            rows.append((key, k, s, counts["equivalent"], score))
            for m, diff in survivors:
                print(f"  SURVIVOR {m.ident} ({m.spec.operator_name}):\n" + "\n".join(
                    "      " + ln for ln in diff.splitlines() if ln.startswith(("-", "+")) and not ln.startswith(("---", "+++"))))
        results["modules"][key] = mod
        if not args.no_named:
            for n in NAMED:
                if n.module == key:
                    outcome = run_named(n, timeout)
                    results["named"].append({"module": key, "what": n.what, "outcome": outcome, "test": n.test})
                    print(f"  named: {n.what}: {outcome}", flush=True)
    if rows:
        print("\nmodule           killed  survived  equivalent  score")
        for key, k, s, e, score in rows:
            print(f"{key:15s} {k:7d} {s:9d} {e:11d}  {100 * score:5.1f} %")
    if results["named"]:
        print("\nnamed mutants (issue 21):")
        for r in results["named"]:
            print(f"  [{r['module']}] {r['what']}: {r['outcome']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
