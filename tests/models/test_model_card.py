"""Model cards: the bundled model says what it was trained on; scans outside that are flagged."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from medseg.core.errors import ConfigError
from medseg.models import list_models
from medseg.models.card import ModelCard, card_for, domain_warnings, load_card
from medseg.samples.phantom import default_phantom_affine, make_phantom
from medseg.core.volume import Volume


def test_bundled_model_card_is_a_demonstration_card():
    card = card_for("phantom_ct_unet")
    assert card.demo and card.modality == "CT" and card.has_weights
    assert "synthetic" in card.training_data and "not for patients" in card.intended_use
    assert card.details is not None and card.details.is_file()
    assert "DEMONSTRATION ONLY" in card.summary()
    untrained = [m.name for m in list_models() if not m.trained]
    assert untrained and all(not card_for(n).has_weights for n in untrained)
    assert "no card" in card_for(untrained[0]).training_data


def test_domain_warnings_modality_intensity_and_fov():
    shape = (40, 64, 64)
    image, _ = make_phantom(shape=shape, affine=default_phantom_affine(shape, (5.0, 4.4, 6.0)), seed=3)
    card = ModelCard("m", modality="CT", intensity_range=(-1010.0, 450.0),
                     fov_mm=((190, 240), (250, 300), (330, 400)))
    ct = image.with_array(image.array, Modality="CT")
    assert domain_warnings(ct, card) == []  # a phantom like the training ones: in domain
    mr = Volume(np.clip(image.array + 1000, 0, None).astype(np.float32) * 3, image.affine, {"Modality": "MR"})
    text = " ".join(domain_warnings(mr, card))
    assert "MR" in text and "CT only" in text and "intensities" in text
    thin = Volume(image.array[:4], image.affine, {"Modality": "CT"})  # 20 mm of z
    assert any("field of view z" in w for w in domain_warnings(thin, card))
    assert any("demonstration" in w for w in domain_warnings(ct, ModelCard("d", demo=True)))


def test_real_ct_is_outside_the_demo_models_domain(real_data):
    from medseg.io import read_volume

    vol = read_volume(real_data / "ct_dicom_series")
    warnings = domain_warnings(vol, card_for("phantom_ct_unet"))
    assert any("demonstration" in w for w in warnings) and any("field of view z" in w for w in warnings)


def test_bad_card_is_a_named_error(tmp_path: Path):
    p = tmp_path / "x.card.yml"
    p.write_text("intensity_range: [5, 1]\n")
    with pytest.raises(ConfigError, match="x.card.yml.*low < high"):
        load_card(p, name="x")


def test_segment_cli_prints_the_card_and_warns(tmp_path: Path, capsys, caplog):
    from medseg.cli import main
    from medseg.io import write_volume

    shape = (24, 64, 64)
    image, _ = make_phantom(shape=shape, affine=default_phantom_affine(shape, (8.0, 5.0, 5.0)), seed=5)
    write_volume(image, tmp_path / "ct.nii.gz")
    with caplog.at_level(logging.WARNING):
        assert main(["segment", str(tmp_path / "ct.nii.gz"), str(tmp_path / "seg.nii.gz"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "trained on: 40 synthetic" in err and "DEMONSTRATION ONLY" in err
    assert any("demonstration model" in r.getMessage() for r in caplog.records)
