"""Regenerate the bundled sample CT study from a fixed seed.

Writes, next to this file:

- ``ct_phantom.nii.gz`` — the CT image in HU (int16), 40 x 128 x 128 voxels (Z, Y, X) at
  5.0 x 2.7 x 2.7 mm, axial, LPS origin centred on the body;
- ``ct_phantom_labels.nii.gz`` + ``ct_phantom_labels.labels.json`` — its label map (liver,
  spleen, both kidneys, aorta, a liver tumour) and label table with SNOMED CT codes;
- ``dicom/`` — the same image as a CT DICOM series (one file per slice, rescale slope 1,
  intercept -1024, deterministic UIDs).

Run ``python -m medseg.sample_data.generate`` (or ``python sample_data/generate.py``).
The output is identical on every run.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from medseg.io import write_segmentation, write_volume
from medseg.samples.phantom import make_phantom

SEED = 20261128
HERE = Path(__file__).resolve().parent

log = logging.getLogger(__name__)


def generate(out: Path = HERE) -> None:
    """Write the sample study into ``out`` (see the module docstring)."""
    image, seg = make_phantom(shape=(40, 128, 128), seed=SEED)
    image = image.with_array(image.array, PatientName="MEDSEG^PHANTOM", source="medseg sample phantom")
    write_volume(image, out / "ct_phantom.nii.gz")
    write_segmentation(seg, out / "ct_phantom_labels.nii.gz")
    from medseg.io.dicom_write import write_dicom_series

    dicom_dir = out / "dicom"
    if dicom_dir.exists():
        shutil.rmtree(dicom_dir)
    write_dicom_series(image, dicom_dir, seed=SEED, patient_name="MEDSEG^PHANTOM", patient_id="MEDSEG-0001",
                       series_description="medseg abdominal phantom", study_description="medseg sample study")
    log.info("sample study written to %s", out)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    generate()
