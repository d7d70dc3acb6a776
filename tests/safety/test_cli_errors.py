"""Every CLI entry point ends in one line and a non-zero exit, never a traceback (issue 18)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest

from medseg.cli import main, run_command
from medseg.core.errors import ModelError


def _args(verbose=0, **kw):
    return argparse.Namespace(verbose=verbose, command="segment", input="scan.nii.gz", **kw)


def test_an_unexpected_exception_is_one_line_naming_the_input(caplog):
    def broken(_args):
        return {}["missing"]

    assert run_command(broken, _args()) == 70
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and lines[0].exc_info is None
    text = lines[0].getMessage()
    assert "scan.nii.gz" in text and "KeyError" in text and "rerun with -v" in text


def test_verbose_shows_the_traceback(caplog):
    def broken(_args):
        raise TypeError("boom")

    assert run_command(broken, _args(verbose=1)) == 70
    assert any(r.exc_info is not None for r in caplog.records)


def test_memory_error_names_the_limit(caplog):
    def big(_args):
        raise MemoryError()

    assert run_command(big, _args()) == 1
    assert "MEDSEG_MAX_VOLUME_BYTES" in caplog.text


def test_segment_with_a_pickled_model_is_a_named_error(tmp_path, phantom, caplog):
    from medseg.io import write_volume

    img = write_volume(phantom[0], tmp_path / "ct.nii.gz")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"\x80\x04\x95garbage\xff\xfe")
    assert main(["segment", str(img), str(tmp_path / "o.nii.gz"), "--model", str(evil)]) == 1
    assert "pickled" in caplog.text and "UnicodeDecodeError" not in caplog.text
    binary_yaml = tmp_path / "evil.yaml"
    binary_yaml.write_bytes(b"\x80\x04\x95garbage\xff\xfe")
    assert main(["segment", str(img), str(tmp_path / "o.nii.gz"), "--model", str(binary_yaml)]) == 1
    assert "not a YAML text file" in caplog.text
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.fixture(scope="module")
def foreign_bundle(tmp_path_factory):
    from medseg.models import load_model
    from medseg.models.bundle import export_bundle

    root = export_bundle(load_model(device="cpu"), tmp_path_factory.mktemp("b") / "bundle")
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    meta.pop("medseg_config")
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    (root / "models" / "model.safetensors").unlink()
    return root


def _edit(bundle: Path, **changes) -> Path:
    path = bundle / "configs" / "inference.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section][field] = value
        else:
            cfg[section] = value
    path.write_text(json.dumps(cfg))
    return bundle


@pytest.mark.parametrize("key,value", [
    ("network_def__channels", "$[8, 16, 32, 64]"),
    ("network_def__out_channels", "$5"),
    ("network_def", "$dict()"),
    ("inferer", {"_target_": "SlidingWindowInferer", "roi_size": "$[96] * 3", "overlap": "$0.5"}),
])
def test_allow_code_bundles_give_named_errors(tmp_path, foreign_bundle, key, value):
    import shutil

    from medseg.models import load_model

    bundle = shutil.copytree(foreign_bundle, tmp_path / "b")
    _edit(bundle, **{key: value})
    with pytest.raises(ModelError):
        load_model(bundle, device="cpu", allow_code=True)


def test_code_in_sections_medseg_does_not_read_is_reported(tmp_path, foreign_bundle, caplog):
    import shutil

    from medseg.models.bundle import import_bundle, unread_code

    bundle = shutil.copytree(foreign_bundle, tmp_path / "b")
    marker = tmp_path / "ran"
    _edit(bundle, trainer={"_target_": "SupervisedTrainer", "hook": f"$open({str(marker)!r}, 'w')"})
    with caplog.at_level(logging.WARNING, logger="medseg"):
        import_bundle(bundle)
    assert "trainer" in caplog.text.split("does not read (")[1].split(")")[0]
    found = unread_code(json.loads((bundle / "configs" / "inference.json").read_text()))
    assert "trainer._target_ = 'SupervisedTrainer'" in found
    assert any(f.startswith("trainer.hook = ") for f in found)
    assert not marker.exists()
