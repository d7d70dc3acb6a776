"""Sample data: the bundled sample CT study (a generated abdominal phantom) and its labels."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def _sample_study():
    """``(image Volume, Segmentation)`` of the sample study, or a freshly generated phantom."""
    from medseg.io import read_segmentation, read_volume

    try:
        from medseg.samples import sample_ct, sample_labels

        ct, labels = sample_ct(), sample_labels()
        if ct.exists() and labels.exists():
            image = read_volume(ct)
            image = image.with_array(image.array, Modality=image.meta.get("Modality", "CT"), name="sample CT")
            return image, read_segmentation(labels)
    except ImportError:
        pass
    from medseg.samples.phantom import make_phantom

    log.info("sample_data files not found; generating the phantom")
    image, seg = make_phantom(shape=(40, 128, 128), seed=20261128)
    return image.with_array(image.array, name="sample CT"), seg


def sample_ct() -> list:
    """Layer data: the sample CT (soft-tissue window) and its reference labels."""
    from medseg_napari._layers import image_layer_data, labels_layer_data

    image, seg = _sample_study()
    return [image_layer_data(image, name="sample CT"), labels_layer_data(seg, name="reference labels")]


def sample_ct_image() -> list:
    """Layer data: the sample CT alone (to try auto-segment and click-to-segment)."""
    from medseg_napari._layers import image_layer_data

    image, _ = _sample_study()
    return [image_layer_data(image, name="sample CT")]
