"""Click-to-segment dock widget over :class:`medseg.interactive.Session`.

Prompt mode (Alt-P): a click adds a positive point, Shift-click (or the "negative" toggle,
Alt-N) a negative one; in box mode a drag draws a box on the current slice, in scribble mode
a drag draws a scribble. Every prompt is a voxel index ``(k, j, i)`` computed from napari's
world position by :func:`._layers.world_to_index`. The engine runs in a worker thread, one
prompt at a time (prompts made meanwhile are queued); the current object's mask updates live
in a preview layer. "Accept" (Alt-A) writes the object into one label map under a name and
locks it; undo (Alt-Z) removes the last prompt (or re-opens the last accepted object).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import numpy as np
from medseg.core.labels import LabelTable
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from medseg.core.editing import bounding_slices
from medseg.core.errors import PromptError
from medseg_napari._layers import (
    METADATA_KEY,
    add_layer_data,
    is_layer_type,
    label_colormap,
    label_features,
    labels_layer_data,
    layer_transform_kwargs,
    make_layer,
    reusable_layer,
    update_layer,
    viewer_camera,
    volume_from_layer,
    world_to_index,
)
from medseg_napari._shortcuts import install_shortcuts
from medseg_napari._streaming import PreparationIndicator, show_slice, slice_engine, watched_prompt
from medseg_napari._worker import LayerCombo, TaskRunner, guide

if TYPE_CHECKING:  # pragma: no cover - the session is imported when one starts
    from medseg.interactive.engine import Engine
    from medseg.interactive.session import Session
    from medseg.core.segmentation import Segmentation
    from medseg.core.volume import Volume

log = logging.getLogger(__name__)

__all__ = ["InteractiveWidget"]

_POS_COLOR = "lime"
_NEG_COLOR = "red"


def _start(volume: Volume, engine: Union[str, Engine], labels_state: Any, *, progress: Any = None,
           cancel: Any = None) -> tuple[Session, Segmentation]:
    from medseg.interactive.session import Session

    from medseg_napari._writer import segmentation_from_state

    if progress:
        progress(0, None, "preparing the image")
    segmentation = segmentation_from_state(*labels_state) if labels_state is not None else None
    session = Session(engine)
    session.set_image(volume, segmentation=segmentation)
    return session, session.segmentation


PREVIEW_NAME = "current object"
#: the fused engine's per-object choice (``FusedEngine.last_choice``) as the status line names it
ANSWERED_BY = {"medsam": "LiteMedSAM", "classical": "the training-free engine"}
PROMPTS_NAME = "prompts"


def session_layers(seg: Any, image_name: str, source: dict) -> dict:
    """Worker thread: layer data and layer objects of a new session (objects, preview, prompts)."""
    from medseg.core.labels import Label, LabelTable

    objects = labels_layer_data(seg, name=f"{image_name} objects", opacity=0.5)
    objects[1]["metadata"][METADATA_KEY]["source"] = source
    preview_table = LabelTable((Label(1, PREVIEW_NAME, (255, 255, 0)),))
    preview = labels_layer_data(
        type(seg)(seg.label_map.with_array(np.zeros(seg.array.shape, np.uint8)), preview_table),
        name=PREVIEW_NAME, opacity=0.6)
    # the image's transform: a points layer with napari's unit scale would add its own slider
    # steps (a 2 mm CT went from 20 to 39 steps when the prompts layer was added)
    prompts = (np.zeros((0, 3)), {"name": PROMPTS_NAME, "size": 6, "face_color": _POS_COLOR, "ndim": 3,
                                  **layer_transform_kwargs(seg.label_map.affine)}, "points")
    return {key: (ld, make_layer(ld)) for key, ld in
            (("objects", objects), ("preview", preview), ("points", prompts))}


def diff_patch(current: np.ndarray, new: np.ndarray, within: Optional[tuple] = None) -> Any:
    """What changes from ``current`` to ``new``: ``None``, ``("box", slices, values)`` or ``("full", new)``.

    Computed in the worker so that the GUI thread only copies the changed box into the layer.
    ``within`` (a box of slices), when given, is where the two may differ: only that box is
    compared (a whole 512x512x300 volume costs about 55 ms).
    """
    if current.shape != new.shape:
        return ("full", np.asarray(new))
    if within is None:
        within = tuple(slice(0, n) for n in current.shape)
    if any(s.stop <= s.start for s in within):
        return None
    new_box = new[within]
    if np.iinfo(current.dtype).max < int(new_box.max(initial=0)):
        return ("full", np.asarray(new))
    diff = current[within] != new_box
    if not diff.any():
        return None
    box = tuple(slice(w.start + d.start, w.start + d.stop) for w, d in zip(within, bounding_slices(diff)))
    return ("box", box, np.asarray(new[box]).astype(current.dtype))


def box_union(a: tuple, b: tuple) -> tuple:
    """The smallest box of slices holding boxes ``a`` and ``b`` (an empty box adds nothing)."""
    if any(s.stop <= s.start for s in a):
        return b
    if any(s.stop <= s.start for s in b):
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _preview_patch(session: Session, preview: np.ndarray, before: tuple) -> Any:
    """The preview layer's update after a prompt: compared only where the mask was or now is."""
    return diff_patch(preview, session.mask, within=box_union(before, session.mask_box))


def apply_patch(layer: Any, patch: Any) -> None:
    """Apply a :func:`diff_patch` to a labels layer (GUI thread; cost ∝ the changed box)."""
    if patch is None or layer is None:
        return
    if patch[0] == "full":
        layer.data = patch[1]
        return
    _, box, values = patch
    layer.data[box] = values
    layer.refresh()


def merge_tables(old: Any, new: Any) -> Any:
    """Label table of the objects layer: ``new`` (the session's) over ``old`` (the layer's).

    Names of values no longer in the map are kept (a redo in napari's history brings their
    voxels back); an old entry whose name a new one now uses is dropped.
    """
    from medseg.core.labels import LabelTable

    entries = {l.index: l for l in old}
    taken = {l.name for l in new}
    entries = {i: l for i, l in entries.items() if l.name not in taken}
    entries.update({l.index: l for l in new})
    return LabelTable(tuple(entries.values()))


def diff_indices(current: np.ndarray, new: np.ndarray, within: Optional[tuple] = None) -> Any:
    """Voxels that differ from ``current`` to ``new``: ``(indices, values)``, ``None`` or ``("full", new)``.

    ``indices`` is a tuple of index arrays (napari's ``Labels.data_setitem`` form), so that the
    GUI thread writes the change through napari's undo history. ``("full", new)`` when the
    new values do not fit the layer's dtype (the layer's array is then replaced).
    """
    patch = diff_patch(current, new, within)
    if patch is None or patch[0] == "full":
        return patch
    _, box, values = patch
    changed = np.nonzero(np.asarray(current[box]) != values)
    indices = tuple(ix + s.start for ix, s in zip(changed, box))
    return indices, values[changed]


def apply_edit(layer: Any, edit: Any) -> int:
    """Write a :func:`diff_indices` result into a labels layer through napari's undo history.

    Uses the public ``Labels.data_setitem`` (one undo step, so Ctrl-Z / Ctrl-Shift-Z undo and
    redo it like a brush stroke). Returns the number of voxels written.
    """
    if edit is None or layer is None:
        return 0
    if edit[0] == "full":
        layer.data = edit[1]
        return int(np.asarray(edit[1]).size)
    indices, values = edit
    if not len(values):
        return 0
    layer.data_setitem(indices, values)
    return int(len(values))


def _sync(session: Session, layer_labels: Any) -> None:
    """Worker thread: the session takes the objects layer's current voxels (paint, erase, undo)."""
    if layer_labels is not None:
        session.sync_labels(*layer_labels)


def _prompt(session: Session, kind: str, args: tuple, positive: bool, preview: np.ndarray, layer_labels: Any = None, *,
            progress: Any = None, cancel: Any = None) -> Any:
    _sync(session, layer_labels)
    before = session.mask_box
    if kind == "point":
        session.add_point(args[0], positive=positive)
    elif kind == "box":
        session.add_box(args[0], args[1])
    else:
        session.add_scribble(args[0], positive=positive)
    return _preview_patch(session, preview, before)


def _undo(session: Session, preview: np.ndarray, *, progress: Any = None, cancel: Any = None) -> Any:
    """Worker thread: undo the current object's last prompt (the preview changes, not the label map)."""
    before = session.mask_box
    changed = session.undo() if session.prompts else False
    return changed, _preview_patch(session, preview, before)


def _reset(session: Session, preview: np.ndarray, *, progress: Any = None, cancel: Any = None) -> Any:
    before = session.mask_box
    session.reset()
    return _preview_patch(session, preview, before)


def _accept(session: Session, name: Optional[str], preview: np.ndarray, objects: np.ndarray, table: Any = None, *,
            progress: Any = None, cancel: Any = None) -> Any:
    _sync(session, (objects, table))
    before = session.mask_box
    index = session.accept(name or None)
    seg = session.segmentation
    # the label map changes only within the accepted object's box
    return index, _preview_patch(session, preview, before), diff_indices(objects, seg.array, within=before), seg.labels


def _reopen(session: Session, index: int, preview: np.ndarray, objects: np.ndarray, table: Any = None, *,
            progress: Any = None, cancel: Any = None) -> Any:
    """Worker thread: label ``index`` becomes the current object; its voxels leave the objects layer.

    Returns the preview's patch and the objects layer's edit (the label's voxels set to 0,
    written through napari's undo history).
    """
    _sync(session, (objects, table))
    before = session.mask_box
    session.reopen(index)
    box = session.mask_box
    hit = np.nonzero(np.asarray(objects[box]) == index)
    indices = tuple(h + s.start for h, s in zip(hit, box))
    return _preview_patch(session, preview, before), (indices, np.zeros(len(hit[0]), objects.dtype))


class InteractiveWidget(QWidget):
    """Point, box and scribble prompts → one label map of accepted, locked objects."""

    def __init__(self, napari_viewer: Any, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: Optional[Session] = None
        self.image_layer: Any = None
        self.objects_layer: Any = None
        self.preview_layer: Any = None
        self.points_layer: Any = None
        self._pending: deque = deque()
        self._drag: list = []
        self._prompt_mode = False
        self._camera_state: Optional[tuple[bool, bool]] = None
        self._labels: Any = None
        self.slices_shown: list[int] = []  # slices of the object shown while the last prompt ran

        self.image_combo = LayerCombo(napari_viewer, "image")
        self.start_labels_combo = QComboBox()  # existing labels to keep (locked)
        self.engine_combo = QComboBox()
        self.engine_combo.addItems(self._engine_names())
        self.start_button = QPushButton("Start session")
        self.start_button.clicked.connect(self.start)
        self.mode_buttons = QButtonGroup(self)
        mode_row = QHBoxLayout()
        for i, name in enumerate(("point", "box", "scribble")):
            b = QRadioButton(name)
            b.setToolTip({"point": "A click adds a point prompt", "box": "Drag a box around the object on this slice",
                          "scribble": "Drag a line through the object"}[name])
            b.setChecked(i == 0)
            self.mode_buttons.addButton(b, i)
            mode_row.addWidget(b)
        self.negative = QCheckBox("negative (Alt-N, or Shift-click)")
        self.prompt_button = QPushButton("Prompt mode (Alt-P)")
        self.prompt_button.setCheckable(True)
        self.prompt_button.toggled.connect(self._set_prompt_mode)
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("object name, e.g. liver")
        self.accept_button = QPushButton("Accept (Alt-A)")
        self.accept_button.clicked.connect(self.accept)
        self.undo_button = QPushButton("Undo (Alt-Z)")
        self.undo_button.clicked.connect(self.undo)
        self.reset_button = QPushButton("Reset (Alt-R)")
        self.reset_button.clicked.connect(self.reset)
        self.reopen_button = QPushButton("Correct with clicks")
        self.reopen_button.clicked.connect(lambda: self.reopen())
        self.locked_label = QLabel("locked: –")
        self.locked_label.setWordWrap(True)
        self.runner = TaskRunner()
        self.runner.finished.connect(self._next)
        # LiteMedSAM: slices embedded in the background, from the slice in view
        self.preparation = PreparationIndicator(napari_viewer, lambda: self.session, lambda: self.image_layer)

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("keep labels", self.start_labels_combo)
        form.addRow("engine", self.engine_combo)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.start_button)
        lay.addLayout(mode_row)
        lay.addWidget(self.negative)
        lay.addWidget(self.prompt_button)
        lay.addWidget(self.name_edit)
        row = QHBoxLayout()
        for b in (self.accept_button, self.undo_button, self.reset_button):
            row.addWidget(b)
        lay.addLayout(row)
        lay.addWidget(self.reopen_button)
        lay.addWidget(self.locked_label)
        lay.addWidget(self.preparation)
        lay.addWidget(self.runner)
        lay.addStretch(1)
        napari_viewer.layers.events.inserted.connect(self._refresh_labels_combo)
        napari_viewer.layers.events.removed.connect(self._refresh_labels_combo)
        self._refresh_labels_combo()
        install_shortcuts(napari_viewer, interactive=self)
        guide(self, "Turn on Prompt mode and click an organ on the image: a click starts a session if none "
              "runs. Shift-click (or 'negative') removes a region, box and scribble modes drag. Type a name "
              "and Accept: the object is locked in the objects layer. Ctrl-Z on that layer undoes accepts, "
              "brush strokes and corrections in order.", {
            'image_combo': 'Image layer to segment by clicking',
            'start_labels_combo': 'An existing labels layer to keep: its labels are locked and act as background',
            'engine_combo': 'fused: LiteMedSAM on full-size slices, the training-free engine elsewhere (default); '
                            'classical: training-free, fastest; learned engines only where they have weights',
            'start_button': 'Start (or restart) a session on the chosen image; a first click in prompt mode also starts one',
            'negative': 'Clicks remove instead of add (or hold Shift while clicking)',
            'prompt_button': 'While on, clicks on the canvas are prompts and panning is off (Alt-P)',
            'name_edit': 'Name of the object to accept, e.g. liver (medseg knows SNOMED codes for common organs)',
            'accept_button': 'Lock the current object into the objects layer under the name (Alt-A)',
            'undo_button': "Undo the last prompt; with none left, napari's undo of the objects layer (Alt-Z)",
            'reset_button': "Drop the current object's prompts and mask; a segment opened with Correct with "
                            "clicks goes back to how it was (Alt-R)",
            'reopen_button': "Make the objects layer's selected label (pick it in the segment list) the current "
                             "object: clicks then correct it near where you click, and Accept writes it back "
                             "under the same number and name",
            'locked_label': 'Labels that new objects never overwrite',
        })

    # -- setup ------------------------------------------------------------------------------
    @staticmethod

    def _engine_names() -> list[str]:
        from medseg.interactive import default_engine

        # the default first: "fused" where LiteMedSAM's weights are installed
        names = ["fused", "classical", "medsam"] if default_engine() == "fused" else ["classical"]
        try:
            from medseg.models import list_models

            names += [m.name for m in list_models() if "interactive" in m.name and m.trained]
        except Exception:  # noqa: BLE001 - the classical engine always works
            pass
        return names

    def _refresh_labels_combo(self, *_: Any) -> None:
        current = self.start_labels_combo.currentText()
        own = {id(self.objects_layer), id(self.preview_layer)}
        names = ["(none)"] + [l.name for l in self.viewer.layers if is_layer_type(l, "labels") and id(l) not in own]
        self.start_labels_combo.clear()
        self.start_labels_combo.addItems(names)
        if current in names:
            self.start_labels_combo.setCurrentText(current)

    @property
    def mode(self) -> str:
        return ("point", "box", "scribble")[max(0, self.mode_buttons.checkedId())]

    def set_mode(self, mode: str) -> None:
        self.mode_buttons.button(("point", "box", "scribble").index(mode)).setChecked(True)

    def start(self) -> bool:
        """Start a session on the chosen image (existing labels kept and locked)."""
        image = self.image_combo.layer()
        if image is None:
            self.runner.status.setText("open an image first")
            return False
        volume = volume_from_layer(image)
        seg = None
        name = self.start_labels_combo.currentText()
        if name and name != "(none)" and name in self.viewer.layers:
            data, meta, _ = self.viewer.layers[name].as_layer_data_tuple()
            seg = (data, meta)
        self._pending.clear()
        self.image_layer = image
        from medseg_napari._autoseg import source_metadata

        name, source = image.name, source_metadata(image)
        return self.runner.start(_start, volume, self.engine_combo.currentText(), seg,
                                 prepare=lambda r: (*r, session_layers(r[1], name, source)),
                                 label="starting session", on_done=lambda r: self._started(r, image))

    def _started(self, result: Any, image: Any) -> Iterator[None]:
        """GUI steps (one layer each, see :class:`TaskRunner`): objects, preview, prompts.

        A new session on the same image reuses the previous session's layers (new data in
        place); otherwise they are removed and new ones added.
        """
        old = slice_engine(self.session)
        self.session, seg, layers = result
        if old is not None and old is not slice_engine(self.session):
            old.cancel()  # the previous session's background embedding ends with it
        self._labels = seg.labels
        self.image_layer = image
        for attr, key in (("objects_layer", "objects"), ("preview_layer", "preview"), ("points_layer", "points")):
            previous = getattr(self, attr)
            layer_data, layer = layers[key]
            if key == "points" and previous is not None and previous in self.viewer.layers \
                    and previous.name == PROMPTS_NAME:
                previous.data = layer_data[0]
            elif key != "points" and reusable_layer(self.viewer, previous, layer_data):
                update_layer(previous, layer_data)
            else:
                if previous is not None and previous in self.viewer.layers:
                    self.viewer.layers.remove(previous)
                    yield
                setattr(self, attr, add_layer_data(self.viewer, layer, select=False))
            yield
        self.viewer.layers.selection.active = image
        self._refresh_labels_combo()
        self._update_locked(seg.labels)
        self.preparation.start()

    # -- prompt mode and mouse ---------------------------------------------------------------
    def toggle_prompt_mode(self) -> None:
        self.prompt_button.setChecked(not self.prompt_button.isChecked())

    def toggle_negative(self) -> None:
        self.negative.setChecked(not self.negative.isChecked())

    def _set_prompt_mode(self, on: bool) -> None:
        cam = viewer_camera(self.viewer)
        if on and not self._prompt_mode:
            self._camera_state = (cam.mouse_pan, cam.mouse_zoom)
            cam.mouse_pan = False
            self.viewer.mouse_drag_callbacks.append(self._on_mouse)
        elif not on and self._prompt_mode:
            if self._on_mouse in self.viewer.mouse_drag_callbacks:
                self.viewer.mouse_drag_callbacks.remove(self._on_mouse)
            if self._camera_state is not None:
                cam.mouse_pan, cam.mouse_zoom = self._camera_state
        self._prompt_mode = on

    def _on_mouse(self, viewer: Any, event: Any):
        """napari drag callback: point on press, box / scribble over the drag.

        A click before a session starts one on the chosen image (the click is its first prompt).
        """
        if (self.session is None or self.image_layer is None) and not self._ensure_session():
            return
        positive = not ("Shift" in event.modifiers or self.negative.isChecked())
        mode = self.mode
        if mode == "point":
            self.add_world_point(event.position, positive=positive)
            return
        start = tuple(event.position)
        path = [start]
        yield
        while event.type == "mouse_move":
            path.append(tuple(event.position))
            yield
        if mode == "box":
            self.add_world_box(start, tuple(event.position))
        else:
            path.append(tuple(event.position))
            self.add_world_scribble(path, positive=positive)

    def _ensure_session(self) -> bool:
        """Start a session on the chosen image if none runs (prompts queue behind its start)."""
        if self.session is not None and self.image_layer is not None:
            return True
        if self.runner.busy and self.image_layer is not None:  # a start is running: queue behind it
            return True
        if not self.start():
            return False
        self.runner.status.setText("starting a session on the first click…")
        return True

    def add_world_point(self, world: Any, *, positive: bool = True) -> tuple[int, int, int]:
        """Add a point prompt at a napari world position; returns its voxel ``(k, j, i)``.

        Starts a session first when none runs (the point is queued behind its start).
        """
        if not self._ensure_session():
            raise PromptError("open an image first: there is no image layer to segment")
        idx = world_to_index(self.image_layer, world)
        self._show_point(world, positive)
        self._queue("point", (idx,), positive)
        return idx

    def add_world_box(self, world_a: Any, world_b: Any) -> tuple:
        """Box prompt between two napari world positions (clipped into the image)."""
        a = world_to_index(self.image_layer, world_a, clip=True)
        b = world_to_index(self.image_layer, world_b, clip=True)
        self._show_point(world_a, True)
        self._show_point(world_b, True)
        self._queue("box", (a, b), True)
        return a, b

    def add_world_scribble(self, worlds: Any, *, positive: bool = True) -> list:
        """Scribble prompt through napari world positions."""
        pts = []
        for w in worlds:
            idx = world_to_index(self.image_layer, w, clip=True)
            if not pts or pts[-1] != idx:
                pts.append(idx)
        for w in worlds[:: max(1, len(worlds) // 20)]:
            self._show_point(w, positive)
        self._queue("scribble", (pts,), positive)
        return pts

    def _show_point(self, world: Any, positive: bool) -> None:
        if self.points_layer is None or self.points_layer not in self.viewer.layers:
            return
        data = self.points_layer.world_to_data(tuple(world))
        self.points_layer.selected_data = set()  # else the colour change applies to the selection
        self.points_layer.current_face_color = _POS_COLOR if positive else _NEG_COLOR
        self.points_layer.add(np.asarray(data)[None, -3:])

    # -- session actions (queued, in worker threads) ---------------------------------------------
    def _queue(self, kind: str, args: tuple, positive: bool) -> None:
        self._pending.append((kind, args, positive))
        self._next()

    def _layer_labels(self) -> Any:
        """``(label map, label table)`` of the objects layer as it is now (the one source of truth)."""
        layer = self.objects_layer
        if layer is None or layer not in self.viewer.layers:
            return None
        from medseg.core.labels import LabelTable

        md = (layer.metadata or {}).get(METADATA_KEY) or {}
        table = LabelTable.from_dict(md["labels"]) if md.get("labels") else LabelTable()
        return layer.data, table

    def _next(self) -> None:
        if self.runner.busy or not self._pending or self.session is None or self.preview_layer is None:
            return
        kind, args, positive = self._pending.popleft()
        self.slices_shown = []
        # an engine that works slice by slice shows the object growing, and Cancel stops it
        self.runner.start(watched_prompt, _prompt, self.session, kind, args, positive, self.preview_layer.data,
                          self._layer_labels(), label=f"{kind} prompt", on_done=self._prompted,
                          on_partial=self._show_slice)

    def _show_slice(self, part: Any) -> None:
        """GUI thread: one slice of the growing object (engines that work slice by slice)."""
        self.slices_shown.append(int(part[0]))
        show_slice(self.preview_layer, part)

    def _prompted(self, result: Any) -> None:
        patch, cancelled = result
        self._show_mask(patch)
        if cancelled:
            self.runner.status.setText("prompt cancelled: the object is as it was before it")
            return
        # the fused engine answers each object with one of two engines: say which one
        by = ANSWERED_BY.get(getattr(self.session.engine, "last_choice", ""), "")
        if by:
            self.runner.status.setText(f"{self.runner.status.text()} (by {by})")

    def _show_mask(self, patch: Any) -> None:
        apply_patch(self.preview_layer, patch)

    def _show_segmentation(self, patch: Any, labels: Any) -> Iterator[None]:
        """GUI steps: the changed box of the objects layer, then (if the table changed) its colours."""
        layer = self.objects_layer
        if layer is None:
            return
        md = layer.metadata.setdefault(METADATA_KEY, {})
        table = merge_tables(LabelTable.from_dict(md["labels"]) if md.get("labels") else LabelTable(), labels)
        if table.to_dict() != md.get("labels"):  # a new colormap re-maps the slice: only when needed
            layer.colormap = label_colormap(table)
            layer.features = label_features(table)
            md["labels"] = table.to_dict()
            yield
        apply_edit(layer, patch)
        self._update_locked(labels)

    def _update_locked(self, labels: Any = None) -> None:
        """Show the locked labels: every label of the session's table (accepted or pre-existing)."""
        if labels is not None:
            self._labels = labels
        table = self._labels
        if table is None:
            return
        names = [f"{table[i].name} ({i})" if i in table else str(i) for i in table.indices]
        self.locked_label.setText("locked: " + (", ".join(names) if names else "–"))

    def accept(self) -> bool:
        """Accept the current object under the typed name (queued after pending prompts)."""
        if self.session is None:
            return False
        if self.runner.busy or self._pending:
            self.runner.status.setText("wait for the prompts to finish, then accept")
            return False
        name = self.name_edit.text().strip() or None
        objects, table = self._layer_labels()
        return self.runner.start(_accept, self.session, name, self.preview_layer.data, objects, table,
                                 label="accepting", on_done=self._accepted)

    def _accepted(self, result: Any) -> Iterator[None]:
        """GUI steps (see :class:`TaskRunner`): objects layer, its colours, preview and prompts."""
        index, preview_patch, objects_patch, labels = result
        yield from self._show_segmentation(objects_patch, labels)
        yield
        self._show_mask(preview_patch)
        if self.points_layer is not None and len(self.points_layer.data):
            yield  # each layer's redraw in a turn of its own
            self.points_layer.data = np.zeros((0, 3))
        self.name_edit.clear()
        self.runner.status.setText(f"accepted label {index} ({labels[index].name})")

    def reopen(self, index: Optional[int] = None) -> bool:
        """Reopen an accepted or loaded label for correction with clicks (queued like a prompt).

        Parameters
        ----------
        index : int, optional
            The label value; default the objects layer's selected label (the segment list's
            selected row). Its voxels move from the objects layer (one step of napari's undo
            history) to the current object, whose name box shows its name; prompts then
            correct it within ``medseg.interactive.session.REOPEN_RADIUS_MM`` of each prompt.
        """
        if self.session is None or self.objects_layer is None or self.runner.busy or self._pending:
            self.runner.status.setText("start a session (with the labels to correct kept) and wait for it first")
            return False
        objects, table = self._layer_labels()
        index = int(self.objects_layer.selected_label if index is None else index)
        name = table[index].name if index in table else f"label_{index}"

        def done(result: Any) -> Iterator[None]:
            preview_patch, edit = result
            apply_edit(self.objects_layer, edit)
            yield
            self._show_mask(preview_patch)
            self.name_edit.setText(name)
            self._update_locked(LabelTable(tuple(l for l in table if l.index != index)))
            self.runner.status.setText(f"correcting {name} ({index}): click to remove or add near its edge, "
                                       f"then Accept")

        return self.runner.start(_reopen, self.session, index, self.preview_layer.data, objects, table,
                                 label=f"reopening label {index}", on_done=done)

    def undo(self) -> bool:
        """Undo the current object's last prompt; with none, napari's undo of the objects layer.

        Accepted objects, paint strokes and corrections are undone in napari's one history of
        the objects layer (the same as Ctrl-Z on that layer), so the two never disagree.
        """
        if self.session is None or self.runner.busy:
            return False
        if not self.session.prompts:
            if self.objects_layer is None or self.objects_layer not in self.viewer.layers:
                return False
            self.objects_layer.undo()
            self.runner.status.setText(f"undid the last change of {self.objects_layer.name!r} (napari's history; "
                                       f"Ctrl-Shift-Z redoes it)")
            return True

        def done(result: Any) -> Iterator[None]:
            changed, preview_patch = result
            self._show_mask(preview_patch)
            yield
            if self.points_layer is not None and len(self.points_layer.data):
                self.points_layer.data = self.points_layer.data[:-1]
            if not changed:
                self.runner.status.setText("nothing to undo")

        return self.runner.start(_undo, self.session, self.preview_layer.data, label="undo", on_done=done)

    def reset(self) -> bool:
        """Drop the current object's prompts and mask."""
        if self.session is None or self.runner.busy:
            return False
        self._pending.clear()

        def done(patch: Any) -> None:
            self._show_mask(patch)
            if self.points_layer is not None:
                self.points_layer.data = np.zeros((0, 3))

        return self.runner.start(_reset, self.session, self.preview_layer.data, label="reset", on_done=done)
