"""The batch path with the bundled default (learned) model, loaded once per worker."""

from __future__ import annotations

import pytest

from medseg.batch import BatchConfig, SegmenterSpec, run_batch


def test_batch_with_default_model(study, tmp_path):
    from medseg.core.errors import ModelError

    spec = SegmenterSpec(None, "cpu", threads=2)
    try:
        segmenter = spec.build()
    except ModelError as exc:
        if "no weights" in str(exc):
            pytest.skip(f"the bundled default model has no trained weights yet: {exc}")
        raise
    summary = run_batch(study, tmp_path / "out", config=BatchConfig(formats=("nifti", "seg", "stats"), segmenter=spec),
                        segmenter=segmenter)
    assert summary["counts"] == {"ok": 3}, [r.get("error") for r in summary["series"]]
    rec = next(r for r in summary["series"] if r["source"]["kind"] == "dicom")
    assert "liver" in rec["label_volumes_ml"] and rec["model"] == "default"
    assert (tmp_path / "out" / rec["id"] / "seg.dcm").is_file() or "seg" in rec["skipped_formats"]
