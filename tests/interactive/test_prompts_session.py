"""Prompts validation and Session bookkeeping (undo, locking, negatives)."""

from __future__ import annotations

import os
import subprocess
import platform
import sys

import numpy as np
import pytest

from medseg.core.errors import InputError, PromptError
from medseg.interactive import Session
from medseg.core.prompts import Box, Point, Scribble, to_index
from medseg.core.segmentation import Segmentation
from medseg.core.labels import Label, LabelTable
from medseg.core.volume import Volume


def _blobs() -> Volume:
    """Two bright cubes on a dark, slightly noisy background (CT-like values)."""
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 5.0, (20, 40, 40)).astype(np.float32)
    a[5:15, 5:18, 5:18] += 200.0
    a[5:15, 22:35, 22:35] += 200.0
    return Volume.from_spacing(a, (2.0, 1.0, 1.0), meta={"Modality": "CT"})


def test_to_index_accepts_integral_values():
    assert to_index((1, 2.0, np.int64(3)), (4, 4, 4)) == (1, 2, 3)


@pytest.mark.parametrize("value, match", [
    ((4, 0, 0), "outside the volume"),
    ((-1, 0, 0), "outside the volume"),
    ((1.5, 2.0, 3.0), "world coordinate"),
    ((1, 2), "3 integers"),
    ((1, 2, 3, 4), "3 integers"),
    ((np.nan, 1, 1), "non-finite"),
    ("abc", "voxel index"),
])
def test_bad_prompts_raise(value, match):
    with pytest.raises(PromptError, match=match):
        to_index(value, (4, 4, 4))


def test_prompt_dataclasses_validate():
    assert Box((3, 0, 5), (1, 2, 0)).validated((4, 4, 6)) == Box((1, 0, 0), (3, 2, 5))
    with pytest.raises(PromptError, match="box corner_b"):
        Box((0, 0, 0), (9, 0, 0)).validated((4, 4, 4))
    with pytest.raises(PromptError, match="at least one point"):
        Scribble(()).validated((4, 4, 4))
    s = Scribble(((0, 0, 0), (0, 0, 3))).validated((4, 4, 4))
    assert s.voxels().tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3]]
    assert Point((1, 1, 1), False).validated((2, 2, 2)).positive is False


def test_session_errors():
    s = Session("classical")
    with pytest.raises(PromptError, match="set_image"):
        s.add_point((0, 0, 0))
    with pytest.raises(InputError, match="medseg Volume"):
        s.set_image(np.zeros((3, 3, 3)))
    s.set_image(_blobs())
    with pytest.raises(PromptError, match="world coordinate"):
        s.add_point((10.0, -112.5, 7.3))  # mm, not an index
    with pytest.raises(PromptError, match="outside the volume"):
        s.add_point((20, 0, 0))
    with pytest.raises(PromptError, match="empty"):
        s.accept("nothing")
    with pytest.raises(InputError, match="lacks"):
        Session(engine=object())


def test_segments_cube_and_undo_restores_exactly():
    vol = _blobs()
    truth = np.zeros(vol.shape, bool)
    truth[5:15, 5:18, 5:18] = True
    s = Session("classical")
    s.set_image(vol)
    m1 = s.add_point((10, 11, 11)).copy()
    # one click covers the cube's core and never leaks into the second cube
    assert (m1 & truth).sum() / truth.sum() > 0.5 and (m1 & ~truth).sum() < 0.05 * truth.sum()
    assert not m1[:, 22:35, 22:35].any()
    m2 = s.add_point((10, 28, 28)).copy()  # second cube joins the object
    assert m2[10, 28, 28] and m2.sum() > m1.sum()
    assert s.undo()
    np.testing.assert_array_equal(s.mask, m1)
    assert s.undo()
    assert not s.mask.any()
    assert s.undo() is False


def test_locked_labels_are_never_overwritten_and_act_as_negatives():
    vol = _blobs()
    s = Session("classical")
    s.set_image(vol)
    s.add_point((10, 11, 11))
    first = s.accept("cube_a")
    assert first == 1 and s.locked == [1]
    a_mask = s.segmentation.array == 1
    # a prompt inside the locked object: the new object may not take its voxels
    s.add_point((10, 28, 28))
    s.add_point((10, 11, 11))
    assert not (s.mask & a_mask).any()
    second = s.accept("cube_b")
    seg = s.segmentation
    np.testing.assert_array_equal(seg.array == 1, a_mask)
    assert second == 2 and (seg.array == 2).any()
    s.add_point((1, 2, 2))  # background voxel: a new, non-empty object
    with pytest.raises(PromptError, match="already used"):
        s.accept("cube_c", index=1)
    with pytest.raises(PromptError, match="name 'cube_a' is already used"):
        s.accept("cube_a")


def test_existing_labels_act_as_negatives():
    vol = _blobs()
    lm = np.zeros(vol.shape, np.uint8)
    lm[5:15, 5:18, 5:18] = 3
    existing = Segmentation(Volume(lm, vol.affine), LabelTable((Label(3, "old"),)))
    s = Session("classical")
    s.set_image(vol, segmentation=existing)
    assert s.locked == [3]
    # bridge the two cubes so that intensity alone would join them
    s.add_point((10, 28, 28))
    assert not (s.mask & (lm == 3)).any()
    assert s.accept() == 4


def test_locked_follows_existing_accepted_and_reopened_labels():
    vol = _blobs()
    lm = np.zeros(vol.shape, np.uint8)
    lm[5:15, 5:18, 5:18] = 3
    lm[0, 0, 0] = 7  # a value the table does not name
    existing = Segmentation(Volume(lm, vol.affine), LabelTable((Label(3, "old"), Label(9, "absent"))))
    s = Session("classical")
    s.set_image(vol, segmentation=existing)
    assert s.locked == [3, 7, 9]  # present values and the table's indices
    assert s.segmentation.labels.names == ["old", "label_7", "absent"]
    s.add_point((10, 28, 28))
    assert s.accept("new") == 10
    assert s.locked == [3, 7, 9, 10]
    assert s.undo()  # re-opens "new": its value leaves the label map
    assert s.locked == [3, 7, 9] and not (s.segmentation.array == 10).any()
    s.reset()
    s.set_image(vol)  # a fresh label map
    assert s.locked == []


def test_undo_reopens_last_accepted_object():
    s = Session("classical")
    s.set_image(_blobs())
    s.add_point((10, 11, 11))
    before = s.mask.copy()
    s.accept("a")
    assert not s.mask.any()
    assert s.undo()
    np.testing.assert_array_equal(s.mask, before)
    assert s.locked == [] and len(s.prompts) == 1
    assert s.accept() == 1


def test_undo_of_an_accept_restores_the_label_map_exactly():
    s = Session("classical")
    s.set_image(_blobs())
    s.add_point((10, 11, 11))
    s.accept("a")
    after_a = s.segmentation.array.copy()
    s.add_point((10, 28, 28))
    s.accept("b")
    assert (s.segmentation.array == 2).any()
    assert s.undo()  # re-opens b: the label map is the one after a, voxel for voxel
    np.testing.assert_array_equal(s.segmentation.array, after_a)
    assert s.accept("b") == 2
    np.testing.assert_array_equal(s.segmentation.array == 1, after_a == 1)


def test_box_and_scribble_prompts():
    vol = _blobs()
    s = Session("classical")
    s.set_image(vol)
    m = s.add_box((4, 4, 4), (15, 18, 18))
    assert m[10, 11, 11] and not m[:, 22:, 22:].any()
    s.reset()
    m = s.add_scribble([(8, 8, 8), (12, 14, 14)])
    assert m[10, 11, 11]
    m2 = s.add_scribble([(10, 28, 28)], positive=False)
    assert not m2[10, 28, 28]


_TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="needs Linux with glibc (malloc_trim)")
@pytest.mark.parametrize("allocator", ["glibc", "tcmalloc"])
def test_release_returns_freed_fragmented_pages(allocator):
    # The session calls release_heap_fragments after every prompt: it trims glibc's heap and
    # leaves tcmalloc (which releases by itself) alone; release_free_memory releases under both.
    # Each allocator runs in a child process: bootstrap.sh preloads tcmalloc, glibc is the default.
    if allocator == "tcmalloc" and not os.path.exists(_TCMALLOC):
        pytest.skip(f"{_TCMALLOC} not installed (apt install libtcmalloc-minimal4)")
    code = """
import os, sys
from medseg.core.memory import release_free_memory, release_heap_fragments

def rss_mb():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

glibc = sys.argv[1] == "glibc"
for release in (release_heap_fragments, release_free_memory):
    blocks = [bytearray(64 * 1024) for _ in range(1600)]  # ~100 MB of heap (below the mmap threshold)
    keep = blocks[-1]
    del blocks
    before = rss_mb()
    if release is release_heap_fragments and not glibc:
        assert release() is False
        continue
    assert release() is True
    after = rss_mb()
    assert after < before - 50, (release.__name__, before, after)
    assert len(keep) == 64 * 1024
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if allocator == "tcmalloc":
        env["LD_PRELOAD"] = _TCMALLOC
    out = subprocess.run([sys.executable, "-c", code, allocator], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr


def test_sync_labels_keeps_outside_edits_and_never_reuses_a_painted_value():
    """A viewer's paint and erase, taken with sync_labels, survive the next accept."""
    from medseg.interactive import Session
    from medseg.core.labels import Label, LabelTable
    from medseg.core.volume import Volume

    img = np.zeros((8, 32, 32), np.float32)
    img[2:6, 4:14, 4:14] = 100.0
    img[2:6, 18:28, 18:28] = 100.0
    s = Session("classical")
    s.set_image(Volume(img, np.eye(4)))
    s.add_point((4, 8, 8))
    assert s.accept("liver") == 1
    painted = s.segmentation.array
    painted[3, 5:8, 5:8] = 0           # erased inside the liver
    painted[0, 0:3, 0:3] = 2           # painted a new label 2 in an empty corner
    assert s.sync_labels(painted, LabelTable((Label(1, "liver", (255, 0, 0)),)))
    assert s.locked == [1, 2] and s.segmentation.labels[2].name == "label_2"
    s.add_point((4, 22, 22))
    idx = s.accept("spleen")
    out = s.segmentation.array
    assert idx == 3, "the painted value 2 must not be reused"
    assert np.all(out[3, 5:8, 5:8] == 0), "erased voxels came back"
    assert np.all(out[0, 0:3, 0:3] == 2)
    assert (out == 3).sum() > 0 and s.segmentation.labels[3].name == "spleen"
    # an object undone outside (its voxels gone) loses its name, which can then be reused
    out[out == 3] = 0
    s.sync_labels(out)
    assert 3 not in s.segmentation.labels.indices
    assert not s.sync_labels(out), "nothing changed: no copy, no change reported"


def test_reopen_corrects_a_loaded_segment_locally_and_accepts_it_back_under_its_index_and_name():
    """A loaded segment (not made by clicks) reopened: a negative click removes only a part
    near it, undo restores the mask as loaded, accept keeps the index, name and colour."""
    from medseg.interactive.session import REOPEN_RADIUS_MM

    rng = np.random.default_rng(0)
    img = rng.normal(0.0, 5.0, (20, 90, 90)).astype(np.float32)
    img[3:17, 5:70, 5:70] += 200.0                 # a large bright block (28 x 65 x 65 mm)
    img[3:17, 75:88, 75:88] += 200.0
    vol = Volume.from_spacing(img, (2.0, 1.0, 1.0), meta={"Modality": "CT"})
    arr = np.zeros(vol.shape, np.uint8)
    arr[3:17, 5:70, 5:70] = 3                      # drawn elsewhere, as label 3
    arr[3:17, 75:88, 75:88] = 1
    table = LabelTable((Label(1, "other", (0, 255, 0)), Label(3, "GTV-1", (10, 20, 250))))
    s = Session("classical")
    s.set_image(vol, segmentation=Segmentation(vol.with_array(arr), table))
    original = arr == 3
    with pytest.raises(PromptError, match="no voxel has label 7"):
        s.reopen(7)
    assert np.array_equal(s.reopen(3), original)
    assert 3 not in s.locked and s.segmentation.labels.names == ["other"]
    with pytest.raises(PromptError, match="not empty"):
        s.reopen(1)
    click = (10, 8, 60)                            # near the block's edge
    mask = s.add_point(click, positive=False).copy()
    removed = original & ~mask
    assert removed.sum() > 0 and not (mask & ~original).any()
    d = np.sqrt((((np.argwhere(removed) - click) * np.asarray(vol.spacing)) ** 2).sum(axis=1))
    assert d.max() <= REOPEN_RADIUS_MM, "a correction changed the segment far from the click"
    assert s.undo() and np.array_equal(s.mask, original)
    s.add_point(click, positive=False)
    s.reset()  # drops the corrections, not the segment
    assert np.array_equal(s.mask, original) and not s.prompts
    s.add_point(click, positive=False)
    assert s.accept() == 3
    seg = s.segmentation
    assert seg.labels[3] == table[3]
    assert np.array_equal(seg.array == 3, original & ~removed) and np.array_equal(seg.array == 1, arr == 1)


def test_a_correction_never_works_against_itself():
    """After a positive correction the mask is the union of the mask before and the engine's
    answer, after a negative one their intersection (the training-free engine re-solves the
    whole object, and may remove voxels after a positive click elsewhere)."""
    from medseg.core.prompts import ObjectPrompts
    from medseg.interactive.session import _monotone_correction

    whole = (slice(0, 10), slice(0, 20), slice(0, 20))
    old = np.zeros((10, 20, 20), bool)
    old[2:6, 2:8, 2:8] = True
    old[2:6, 14:18, 14:18] = True
    before = (whole, old)
    new = old.copy()
    new[2:6, 8:11, 2:8] = True  # added at the click
    new[2:6, 14:18, 14:18] = False  # removed far away
    sl = (slice(1, 10), slice(0, 19), slice(1, 20))  # the engine's ROI: not the mask's box
    pos = ObjectPrompts(np.array([[3, 4, 4], [3, 9, 4]]), np.zeros((0, 3), int), None, np.array([[3, 9, 4]]), True)
    box, out = _monotone_correction(before, sl, new[sl], pos)
    full = np.zeros_like(old)
    full[box] = out
    np.testing.assert_array_equal(full, old | new)
    neg = ObjectPrompts(pos.positive[:1], np.array([[3, 4, 7]]), None, np.array([[3, 4, 7]]), False)
    new2 = old.copy()
    new2[2:6, 2:8, 6:8] = False  # removed at the click
    new2[8, 0:3, 0:3] = True  # added far away
    box, out = _monotone_correction(before, whole, new2, neg)
    full = np.zeros_like(old)
    full[box] = out
    np.testing.assert_array_equal(full, old & new2)
    # a positive click inside the mask is a hint, not a correction: the engine's answer stands
    # (its re-solve may trim a leak)
    hint = ObjectPrompts(pos.positive, np.zeros((0, 3), int), None, np.array([[3, 4, 4]]), True)
    box, out = _monotone_correction(before, sl, new[sl], hint)
    assert box == sl and out is not None and np.array_equal(out, new[sl])
    outside_neg = ObjectPrompts(pos.positive[:1], np.array([[8, 1, 1]]), None, np.array([[8, 1, 1]]), False)
    box, out = _monotone_correction(before, whole, new2, outside_neg)  # a negative click outside the mask
    assert box == whole and np.array_equal(out, new2)
    # nothing to change: the engine's own arrays come back (it recognises them as `previous`)
    grown = old | new
    box, out = _monotone_correction(before, whole, grown, pos)
    assert box == whole and out is grown
    # an object's first prompt: the engine's answer
    first = ObjectPrompts(pos.positive[:1], np.zeros((0, 3), int))
    for prev in (before, None):
        box, out = _monotone_correction(prev, sl, new[sl], first)
        assert box == sl and np.array_equal(out, new[sl])


class _WholeVolumeEngine:
    """An engine that answers on the whole volume with open slices (``slice(None)``), as the
    random-walker baseline does: a threshold region grown from the positive clicks."""

    name = "whole"
    prompt_types = ("point",)
    supports_undo = True
    background_preparation = False

    def set_image(self, volume):
        self.image = volume.array

    def reset(self):
        pass

    def predict(self, prompts, *, blocked=None, previous=None):
        from scipy import ndimage as ndi

        lab, _ = ndi.label(self.image > 100)
        keep = {int(lab[tuple(p)]) for p in prompts.positive} - {0}
        mask = np.isin(lab, list(keep))
        for p in prompts.negative:
            mask &= lab != lab[tuple(p)]
        return (slice(None),) * 3, mask


def test_corrections_with_an_engine_that_answers_with_open_slices():
    s = Session(_WholeVolumeEngine())
    s.set_image(_blobs())
    m = s.add_point((10, 10, 10))
    assert m[10, 10, 10] and not m[10, 28, 28]
    m = s.add_point((10, 28, 28))  # a positive correction: the union
    assert m[10, 10, 10] and m[10, 28, 28]
    m = s.add_point((10, 10, 10), positive=False)  # a negative one: the intersection
    assert not m[10, 10, 10] and m[10, 28, 28]
    assert s.undo() and s.mask[10, 10, 10]


class _InPlaceEngine(_WholeVolumeEngine):
    """Answers with the region of the newest positive click only, after updating the array it
    was given as ``previous`` in place (as an engine's incremental path may)."""

    def predict(self, prompts, *, blocked=None, previous=None):
        from scipy import ndimage as ndi

        if previous is not None:
            previous[1][...] = False
        lab, _ = ndi.label(self.image > 100)
        return (slice(None),) * 3, lab == lab[tuple(prompts.positive[-1])]


def test_the_correction_rule_reads_the_mask_before_not_the_array_the_engine_was_given():
    s = Session(_InPlaceEngine())
    s.set_image(_blobs())
    s.add_point((10, 10, 10))
    m = s.add_point((10, 28, 28))  # the engine answers cube b only: the union keeps cube a
    assert m[10, 10, 10] and m[10, 28, 28]
