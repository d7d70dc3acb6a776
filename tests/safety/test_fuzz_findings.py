"""Regression tests for what the fuzzer found (issue 18)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.core.errors import FileFormatError, ModelError


def _mha(tmp_path, **replace):
    import SimpleITK as sitk

    path = tmp_path / "img.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.int16)), str(path), useCompression=False)
    data = path.read_bytes()
    for old, new in replace.items():
        data = data.replace(old.encode(), new.encode())
    path.write_bytes(data)
    return path


def test_metaimage_ndims_99_is_a_named_error_not_a_heap_corruption(tmp_path):
    # SimpleITK's MetaIO aborted the whole process ("corrupted size vs. prev_size") on this header
    from medseg.io import read_header, read_volume

    path = _mha(tmp_path, **{"NDims = 3": "NDims = 99"})
    with pytest.raises(FileFormatError, match="NDims = 99"):
        read_volume(path)
    with pytest.raises(FileFormatError, match="NDims = 99"):
        read_header(path)
    bad_type = _mha(tmp_path, **{"MET_SHORT": "MET_XX"})
    with pytest.raises(FileFormatError, match="ElementType"):
        read_volume(bad_type)


def test_label_table_with_malformed_entries_is_a_named_error(tmp_path):
    from medseg.core.labels import LabelTable

    for content in (["liver"], {"labels": ["x"]}, {"labels": [{"index": 1, "name": "a", "code": "str"}]},
                    {"labels": [{"index": 2**70, "name": "a"}]}):
        path = tmp_path / "t.labels.json"
        path.write_text(json.dumps(content))
        with pytest.raises(FileFormatError, match="not a valid label table"):
            LabelTable.read(path)


def test_model_yaml_with_an_impossible_weights_name_is_a_named_error(tmp_path):
    import yaml

    from medseg.models import load_model

    cfg = {"name": "m", "network": {"name": "unet", "spatial_dims": 3, "channels": [4, 8], "strides": [2]},
           "labels": {1: "a"}, "weights": "x" * 10000}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ModelError, match="no weights"):
        load_model(path, device="cpu")


def test_model_config_with_a_zero_stride_is_a_config_error(tmp_path):
    import yaml

    from medseg.core.errors import ConfigError
    from medseg.models import load_model

    cfg = {"name": "m", "network": {"name": "unet", "spatial_dims": 3, "channels": [4, 8], "strides": [0]},
           "labels": {1: "a"}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="strides must be positive"):
        load_model(path, device="cpu", allow_untrained=True)


def test_segment_refuses_an_affine_with_parallel_axes(tmp_path):
    from medseg.core.errors import GeometryError
    from medseg.inference.mapping import check_orientable
    from medseg.core.volume import Volume

    affine = np.array([[-1e30, 0.0, 8.0, -60.0], [0.0, 8.0, 0.0, -60.0], [8.0, 0.0, 0.0, -28.0], [0, 0, 0, 1.0]])
    vol = Volume(np.zeros((8, 16, 16), np.int16), affine)
    with pytest.raises(GeometryError, match="do not map one-to-one"):
        check_orientable(vol)


def test_a_panicking_native_decoder_is_a_named_error(tmp_path):
    """pylibjpeg-rle panics (pyo3 PanicException, a BaseException) on this corrupt RLE frame; the
    fuzzer's 4-minute run died of it. It must be a DicomError, in the API and on the command line."""
    from medseg.cli import main
    from medseg.core.errors import DicomError
    from medseg.io import read_volume

    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.dcm").write_bytes(_rle_panic_bytes())
    with pytest.raises(DicomError, match="cannot decode the pixel data"):
        read_volume(tmp_path / "s")
    assert main(["convert", str(tmp_path / "s"), str(tmp_path / "o.nii.gz")]) == 1


def _rle_panic_bytes() -> bytes:
    """pydicom's MR_small_RLE.dcm with bytes of its pixel data flipped (the mutation of seed 9)."""
    import io
    import random

    import pydicom
    from pydicom.data import get_testdata_file

    data = open(get_testdata_file("MR_small_RLE.dcm"), "rb").read()
    px = bytes(pydicom.dcmread(io.BytesIO(data)).PixelData)
    start = data.rfind(px[:64])
    rng = random.Random(9)
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(start, len(b))
        b[i] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    return bytes(b)


def test_model_config_with_huge_channels_is_refused_before_allocating(tmp_path):
    """A model YAML whose channels ask for ~200 GiB of parameters (the 20-minute fuzz run grew to
    9 GB RSS building one) is refused by name, from a build on PyTorch's meta device."""
    import resource

    import yaml

    from medseg.io.limits import max_volume_bytes_limit
    from medseg.models import load_model

    cfg = {"name": "m", "network": {"name": "unet", "spatial_dims": 3, "channels": [16, 32, 20_000_000, 8],
                                    "strides": [2, 2, 2]}, "labels": {1: "a"}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ModelError, match=r"would need 210\.0 GiB of parameters, more than the memory limit"):
        load_model(path, device="cpu", allow_untrained=True)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) < 512 * 1024  # nothing allocated
    small = dict(cfg, network=dict(cfg["network"], channels=[4, 8, 16, 8]))
    path.write_text(yaml.safe_dump(small))
    with max_volume_bytes_limit(1000):  # the same limit volumes obey: 4-8-16-8 UNet needs more than 1 kB
        with pytest.raises(ModelError, match="more than the memory limit of"):
            load_model(path, device="cpu", allow_untrained=True)
    assert load_model(path, device="cpu", allow_untrained=True).network is not None


@pytest.mark.parametrize("network, match", [
    ({"num_res_units": 1e308}, r"num_res_units must be an integer"),
    ({"num_res_units": 17}, r"num_res_units must be an integer in \[0, 16\]"),
    ({"channels": [4] * 14, "strides": [2] * 13}, "channels has 14 entries; medseg builds at most 12"),
])
def test_bundle_asking_for_unbounded_modules_is_refused_before_building(tmp_path, network, match):
    """A bundle whose UNet asked for 1e308 residual units grew the 20-minute fuzz run to 24 GB
    (the OOM killer) inside the constructor itself, before any parameter count could refuse it;
    the fuzzer's out-of-process watchdog named it (kind=bundle seed=905316078)."""
    from medseg.core.errors import ConfigError
    from medseg.models import load_model
    from medseg.models.bundle import export_bundle

    import yaml

    cfg = {"name": "m", "network": {"name": "unet", "spatial_dims": 3, "channels": [4, 8], "strides": [2]},
           "labels": {1: "a"}}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    bundle = tmp_path / "bundle"
    export_bundle(load_model(path, device="cpu", allow_untrained=True), bundle)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta.pop("medseg_config", None)  # a foreign bundle: the network comes from inference.json
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    inference["network_def"].update(network)
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference))
    with pytest.raises((ConfigError, ModelError), match=match):
        load_model(bundle, device="cpu")
    cfg["network"].update(network)
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=match):
        load_model(path, device="cpu", allow_untrained=True)


def test_learned_interactive_config_obeys_the_network_bounds(tmp_path):
    """An interactive_*.yaml is a network config too: the same structural bounds apply."""
    import yaml

    from medseg.core.errors import ConfigError
    from medseg.interactive.learned import load_config

    path = tmp_path / "interactive_x.yaml"
    path.write_text(yaml.safe_dump({"num_res_units": 10**9}))
    with pytest.raises(ConfigError, match=r"num_res_units must be an integer in \[0, 16\]"):
        load_config(path)
    path.write_text(yaml.safe_dump({"channels": [4, 8], "strides": [2, 2]}))
    with pytest.raises(ConfigError, match="strides needs len"):
        load_config(path)
    path.write_text(yaml.safe_dump({"channels": [4, 8], "strides": [2]}))
    assert load_config(path)[0].channels == (4, 8)
