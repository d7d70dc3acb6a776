"""The click-to-segment preview is updated from a bounded diff and stays equal to the session's mask."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.interactive import Session
from medseg.core.volume import Volume

from medseg_napari import _interactive as I

pytestmark = pytest.mark.gui


def _apply(array: np.ndarray, patch):
    """:func:`I.apply_patch` on a plain array (what the GUI step does to the layer's data)."""
    if patch is None:
        return array
    if patch[0] == "full":
        return np.asarray(patch[1]).copy()
    array[patch[1]] = patch[2]
    return array


def _write(array: np.ndarray, edit):
    """:func:`I.apply_edit` on a plain array (napari's ``data_setitem`` writes the same voxels)."""
    if edit is None:
        return array
    if edit[0] == "full":
        return np.asarray(edit[1]).copy()
    array[edit[0]] = edit[1]
    return array


def test_diff_patch_within_a_box_equals_the_whole_volume_diff():
    rng = np.random.default_rng(0)
    current = np.zeros((20, 30, 40), np.uint8)
    current[4:9, 5:12, 6:20] = rng.random((5, 7, 14)) > 0.5
    new = np.zeros(current.shape, bool)
    new[6:14, 10:25, 15:30] = rng.random((8, 15, 15)) > 0.5
    within = I.box_union((slice(4, 9), slice(5, 12), slice(6, 20)), (slice(6, 14), slice(10, 25), slice(15, 30)))
    assert within == (slice(4, 14), slice(5, 25), slice(6, 30))
    whole, bounded = I.diff_patch(current, new), I.diff_patch(current, new, within=within)
    assert whole[0] == bounded[0] == "box" and whole[1] == bounded[1]
    np.testing.assert_array_equal(whole[2], bounded[2])
    np.testing.assert_array_equal(_apply(current.copy(), bounded), new)
    empty = (slice(0, 0),) * 3
    assert I.box_union(empty, within) == within and I.box_union(within, empty) == within
    assert I.diff_patch(current, new, within=empty) is None


def test_preview_follows_the_session_through_prompts_undo_accept_and_reset():
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 5.0, (24, 48, 48)).astype(np.float32)
    a[4:14, 5:20, 5:20] += 200.0
    a[6:20, 26:44, 24:44] += 200.0
    s = Session("classical")
    s.set_image(Volume.from_spacing(a, (2.0, 1.0, 1.0), meta={"Modality": "CT"}))
    preview = np.zeros(a.shape, np.uint8)
    objects = np.zeros(a.shape, np.uint8)

    def check():
        np.testing.assert_array_equal(preview.astype(bool), s.mask)
        assert s.mask.sum() == s.mask[s.mask_box].sum()  # nothing outside the session's box

    preview = _apply(preview, I._prompt(s, "point", ((9, 12, 12),), True, preview))
    check()
    preview = _apply(preview, I._prompt(s, "point", ((12, 35, 34),), True, preview))  # the ROI moves and grows
    check()
    preview = _apply(preview, I._prompt(s, "point", ((12, 35, 34),), False, preview))
    check()
    changed, p = I._undo(s, preview)
    preview = _apply(preview, p)
    assert changed
    check()
    index, p, o, _ = I._accept(s, "blob", preview, objects)
    preview, objects = _apply(preview, p), _write(objects, o)
    check()
    assert not preview.any() and (objects == index).any()
    assert np.array_equal(objects, s.segmentation.array)
    # no prompt left: the session's undo changes nothing (the accept is undone in napari's
    # history of the objects layer, which the session reads before the next prompt)
    changed, p = I._undo(s, preview)
    assert not changed and p is None
    objects[objects == index] = 0  # what napari's undo of the accept leaves in the layer
    preview = _apply(preview, I._prompt(s, "point", ((9, 12, 12),), True, preview, (objects, None)))
    check()
    assert index not in s.segmentation.labels.indices and not s.segmentation.array.any()
    preview = _apply(preview, I._reset(s, preview))
    check()
    assert not preview.any()
