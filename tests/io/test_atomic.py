"""medseg.io.atomic: a write either replaces the target completely or leaves it untouched."""

from __future__ import annotations

import pytest

from medseg.io.atomic import atomic_path, full_suffix


@pytest.mark.parametrize("name, suffix", [
    ("a.nii.gz", ".nii.gz"), ("A.NII.GZ", ".nii.gz"), ("x.seg.nrrd", ".seg.nrrd"), ("b.tar.gz", ".tar.gz"),
    ("c.nrrd", ".nrrd"), ("d.gz", ".gz"), ("summary.json", ".json"), ("noext", ""), ("my.scan.mha", ".mha"),
])
def test_full_suffix(name, suffix, tmp_path):
    assert full_suffix(name) == suffix
    assert full_suffix(tmp_path / "sub.dir" / name) == suffix


def test_success_replaces_the_target_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "new" / "deeper" / "out.nii.gz"  # parents are created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".partial.nii.gz") and tmp.name.startswith(".")
        assert tmp.exists() and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.nii.gz"]
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"newer")
        assert target.read_bytes() == b"old"  # untouched until the block ends
    assert target.read_bytes() == b"newer"


@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt])
def test_an_exception_leaves_no_temporary_file_and_the_target_untouched(tmp_path, exc):
    target = tmp_path / "result.json"
    target.write_text("user data")
    with pytest.raises(exc):
        with atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise exc("writer failed")
    assert target.read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    fresh = tmp_path / "fresh.csv"
    with pytest.raises(ValueError):
        with atomic_path(fresh):
            raise ValueError("before writing anything")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
