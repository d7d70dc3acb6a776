"""Training data discovery, the stable split, phantom datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.core.errors import FileFormatError, InputError
from medseg.io import read_segmentation, read_volume
from medseg.training import case_fold, find_cases, split_cases
from medseg.training.data import Case, dataset_labels, load_case
from medseg.training.phantom_dataset import random_phantom_grid, write_phantom_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("ph") / "ds", 3, seed=7)


def test_phantom_dataset_layout(dataset: Path):
    data = json.loads((dataset / "dataset.json").read_text())
    assert data["numTraining"] == 3 and data["labels"]["1"] == "liver"
    cases = find_cases(dataset)
    assert [c.case_id for c in cases] == ["phantom_0007", "phantom_0008", "phantom_0009"]
    img, seg = read_volume(cases[0].image), read_segmentation(cases[0].label)
    assert img.same_grid(seg.label_map) and seg.present_indices()[:4] == [1, 2, 3, 4]
    assert dataset_labels(dataset)[3] == "kidney_right"


def test_random_grids_vary_orientation_and_spacing():
    rng = np.random.default_rng(0)
    codes = {random_phantom_grid(rng)[1].round(3).tobytes() for _ in range(10)}
    assert len(codes) == 10
    shape, affine = random_phantom_grid(rng, vary=False)
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), (4.0, 3.0, 3.0))


def test_images_and_labels_folders_without_json(tmp_path: Path, dataset: Path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    src = find_cases(dataset)[0]
    (tmp_path / "imagesTr" / "a_0000.nii.gz").write_bytes(src.image.read_bytes())
    (tmp_path / "labelsTr" / "a.nii.gz").write_bytes(src.label.read_bytes())
    (tmp_path / "imagesTr" / "notes.txt").write_text("ignored")
    cases = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["a"]
    (tmp_path / "imagesTr" / "b.nii.gz").write_bytes(src.image.read_bytes())
    with pytest.raises(FileFormatError, match="has no label map"):
        find_cases(tmp_path)


def test_layout_errors(tmp_path: Path):
    with pytest.raises(FileFormatError, match="no dataset.json and no imagesTr"):
        find_cases(tmp_path)
    (tmp_path / "dataset.json").write_text("{}")
    with pytest.raises(FileFormatError, match="not a Decathlon dataset.json"):
        find_cases(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": "x.nii.gz", "label": "y.nii.gz"}]}))
    with pytest.raises(FileFormatError, match="missing"):
        find_cases(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(FileFormatError, match="holds no training cases"):
        find_cases(tmp_path)


def test_split_is_stable_when_cases_are_added():
    cases = [Case(f"case{i}", Path("i"), Path("l")) for i in range(40)]
    train, val = split_cases(cases)
    more = cases + [Case(f"new{i}", Path("i"), Path("l")) for i in range(40)]
    train2, val2 = split_cases(more)
    assert {c.case_id for c in val} <= {c.case_id for c in val2}
    assert {c.case_id for c in train} <= {c.case_id for c in train2}
    assert 0 < len(val) < 40 and case_fold("case3", 5) == case_fold("case3", 5)
    with pytest.raises(InputError, match="case ids must be unique"):
        split_cases(cases + cases[:1])
    with pytest.raises(InputError, match="need folds >= 2"):
        split_cases(cases, folds=1)


def test_label_values_beyond_the_config_are_refused(dataset: Path):
    from medseg.models import PreprocessingConfig

    with pytest.raises(InputError, match="exceeds the config's 3 labels"):
        load_case(find_cases(dataset)[0], PreprocessingConfig(), num_labels=3)
