"""The bundled sample study: present, consistent across formats, reproducible."""

from __future__ import annotations

import numpy as np

from medseg.io import read_segmentation, read_volume
from medseg.samples.phantom import make_phantom
from medseg.samples import sample_ct, sample_dicom_dir, sample_labels


def test_sample_dicom_matches_nifti():
    dicom = read_volume(sample_dicom_dir())
    nifti = read_volume(sample_ct())
    assert dicom.meta["Modality"] == "CT"
    assert np.array_equal(dicom.array, nifti.array)
    assert np.allclose(dicom.affine, nifti.affine, atol=1e-3)
    assert dicom.orientation == "SPL"


def test_sample_matches_its_generator():
    from medseg.sample_data.generate import SEED

    image, seg = make_phantom(shape=(40, 128, 128), seed=SEED)
    assert np.array_equal(read_volume(sample_ct()).array, image.array)
    labels = read_segmentation(sample_labels())
    assert np.array_equal(labels.array, seg.array)
    assert labels.labels == seg.labels
    assert np.allclose(labels.affine, image.affine, atol=1e-4)
