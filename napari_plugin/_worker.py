"""Worker threads with progress and cancel for the dock widgets, plus shared Qt helpers.

Every computation of the plugin runs through :class:`TaskRunner`: the function runs in a
worker thread (superqt's public ``FunctionWorker``) with medseg's ``progress=`` / ``cancel=``
callbacks, progress reaches the GUI thread through a queued Qt signal (throttled), and results
are handed to a callback on the GUI thread, which only applies them through napari's public
layer API. Whatever depends on the data (label tables, layer kwargs, even the napari layer
objects) is prepared in the worker thread (``prepare=``). An ``on_done`` generator runs one
GUI step per event-loop turn (a 0 ms ``QTimer.singleShot``), so that the window stays
responsive between the steps of a long update.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import weakref
import time
from typing import Any, Callable, Iterator, Optional

from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

log = logging.getLogger(__name__)

__all__ = ["TaskRunner", "LayerCombo", "notify_error", "guide"]


def _then(fn: Callable[..., Any], prepare: Callable[[Any], Any], *args: Any, **kwargs: Any) -> Any:
    """Worker-thread body: ``prepare(fn(*args, **kwargs))``."""
    return prepare(fn(*args, **kwargs))


def _task_body(fn: Callable[..., Any], args: tuple, process: bool,
               prepare: Optional[Callable[[Any], Any]]) -> tuple[Callable[..., Any], tuple]:
    """The worker thread's function and arguments: ``fn`` itself, or ``fn`` handed to the helper
    process (:func:`medseg.parallel.run_in_process`), then ``prepare`` applied to its result."""
    if process:
        from medseg.parallel import run_in_process

        args = (fn, *args)
        fn = run_in_process
    if prepare is not None:
        fn = functools.partial(_then, fn, prepare)
    return fn, args


class _OneShot:
    """A task's function and arguments, given up as the call starts.

    The worker object outlives its task: superqt keeps it in a class-level set of running
    workers until a signal queued after ``finished``, so the runner's end came before the
    worker let go of the arguments (a click's session with its volume-sized arrays; seen as a
    failing test once in CI), and Qt connections may keep it longer. Here only the running
    call's frame holds them, and they are freed by reference counting when it returns.
    """

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        self._call: Optional[tuple] = (fn, args, kwargs)

    def __call__(self, **runner_kwargs: Any) -> Any:
        call, self._call = self._call, None
        if call is None:
            raise RuntimeError("a task runs once")
        fn, args, kwargs = call
        del call
        try:
            return fn(*args, **kwargs, **runner_kwargs)
        finally:
            del fn, args, kwargs  # not kept by the frame of a traceback either


def notify_error(message: str) -> None:
    """Show an error in napari's notification area (and log it)."""
    log.error(message)
    try:
        from napari.utils.notifications import show_error

        show_error(message)
    except Exception:  # noqa: BLE001 - no notification manager
        pass


def guide(widget: QWidget, howto: str, tips: dict[str, str]) -> QLabel:
    """A short how-to at the top of ``widget`` and tooltips on its controls.

    Parameters
    ----------
    widget : QWidget
        A dock widget with a box layout.
    howto : str
        Two or three sentences: what the widget is for and the usual order of actions.
    tips : dict
        Attribute name of a control → its tooltip.
    """
    label = QLabel(howto)
    label.setWordWrap(True)
    label.setObjectName("howto")
    label.setStyleSheet("color: palette(mid); font-style: italic;")
    layout = widget.layout()
    if layout is not None and hasattr(layout, "insertWidget"):
        layout.insertWidget(0, label)
    for name, tip in tips.items():
        getattr(widget, name).setToolTip(tip)
    return label


class _Bridge(QObject):
    progressed = Signal(int, int, str)
    partial = Signal(int, object)  # (task number, a part of the result)


def _gone(alive: list, events: list) -> None:
    alive[0] = False
    for e in events:
        e.set()


class TaskRunner(QWidget):
    """A progress bar, a status line and a Cancel button running one task at a time.

    ``start(fn, *args, on_done=..., **kwargs)`` calls ``fn(*args, progress=..., cancel=...,
    **kwargs)`` in a worker thread; ``on_done(result)`` then runs on the GUI thread.
    """

    finished = Signal()

    def __init__(self, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress, Qt.ConnectionType.QueuedConnection)
        self._bridge.partial.connect(self._on_partial, Qt.ConnectionType.QueuedConnection)
        self._task = 0  # number of the running task: parts of an older task's result are dropped
        self._partial_cb: Optional[Callable[[Any], None]] = None
        self._cancel = threading.Event()
        self._worker: Any = None
        self._steps: Optional[Iterator[Any]] = None  # GUI steps of an on_done generator
        self._finish_pending: Optional[Callable[[], None]] = None
        self._last_emit = 0.0
        self.last_error: Optional[BaseException] = None
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.status = QLabel("ready")
        self.status.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running task at its next safe point")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        row = QHBoxLayout()
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.status)
        # a task still running when its widget goes (the viewer closed) is asked to stop, and
        # what it hands back is dropped (the runner's own Qt widgets are gone)
        events = self._live_cancel_events = []
        alive = self._alive = [True]
        # when the Python side goes, the task is asked to stop (a plain finalizer: no Python code
        # runs inside Qt's own destruction, which crashed napari 0.5's test teardown)
        weakref.finalize(self, _gone, alive, events)

    def _is_alive(self) -> bool:
        """False once the widget is gone (its viewer closed): results are then dropped."""
        if self._alive[0]:
            try:
                self.objectName()  # raises RuntimeError once Qt deleted the widget
            except RuntimeError:
                _gone(self._alive, self._live_cancel_events)
        return self._alive[0]

    @property
    def busy(self) -> bool:
        """True while a task runs (its worker, or the GUI steps of its ``on_done``)."""
        return self._worker is not None or self._steps is not None

    def cancel(self) -> None:
        """Ask the running task to stop at its next safe point."""
        if self._worker is not None:
            self._cancel.set()
            self.status.setText("cancelling…")

    def _progress(self, done: int, total: Optional[int], message: str) -> None:
        now = time.monotonic()
        if now - self._last_emit < 0.05 and not (total and done >= total):
            return
        self._last_emit = now
        self._bridge.progressed.emit(int(done), int(total or 0), str(message))

    def _on_partial(self, task: int, part: Any) -> None:
        if task == self._task and self._partial_cb is not None and self._is_alive():
            try:
                self._partial_cb(part)
            except Exception:  # noqa: BLE001 - a display step must not end the task
                log.exception("showing a partial result failed")

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if total > 0:
            self.bar.setRange(0, total)
            self.bar.setValue(min(done, total))
        else:
            self.bar.setRange(0, 0)  # busy indicator
        self.status.setText(message)

    def start(
        self,
        fn: Callable[..., Any],
        *args: Any,
        label: str = "working",
        on_done: Optional[Callable[[Any], None]] = None,
        on_error: Optional[Callable[[BaseException], None]] = None,
        process: bool = False,
        prepare: Optional[Callable[[Any], Any]] = None,
        on_partial: Optional[Callable[[Any], None]] = None,
        **kwargs: Any,
    ) -> bool:
        """Run ``fn`` in a worker thread; returns False (and does nothing) while busy.

        With ``process=True`` the worker thread hands ``fn`` to a helper process (see
        :func:`medseg.parallel.run_in_process`): for library code that holds the GIL. ``fn`` and
        its arguments must then be picklable; Cancel stops the helper when ``fn`` does not stop
        by itself.

        ``prepare(result)``, when given, runs in the worker thread (never in the helper process)
        after ``fn``, and ``on_done`` receives what it returns: the place to turn results into
        napari layer data or layer objects, off the GUI thread.

        ``on_partial``, when given, makes ``fn`` receive ``partial=``: each ``partial(part)``
        call in the worker reaches ``on_partial(part)`` on the GUI thread, in order and before
        ``on_done`` (the slices of a 3D object as they are ready). Parts a task sends after a
        newer task started are dropped.
        """
        if process and on_partial is not None:
            raise ValueError("on_partial needs a thread task: parts cannot come back from a helper process")
        if self.busy:
            self.status.setText("busy: wait for the running task or cancel it")
            return False
        # superqt's public worker class, not napari's wrapper (napari.qt.threading.create_worker):
        # napari 0.9 registers every worker in the window's task-status list and never drops
        # it, so each task's arguments stayed alive for the life of the window. Errors are
        # reported by this runner (``errored``); cancel is this runner's own.
        from superqt.utils import FunctionWorker

        self._cancel = threading.Event()
        self._live_cancel_events[:] = [self._cancel]
        self.last_error = None
        self._task += 1
        self._partial_cb = on_partial
        if on_partial is not None:
            kwargs["partial"] = functools.partial(self._bridge.partial.emit, self._task)
        fn, args = _task_body(fn, args, process, prepare)
        worker = FunctionWorker(_OneShot(fn, args, kwargs), progress=self._progress, cancel=self._cancel.is_set)
        self._worker = worker
        self.bar.setRange(0, 0)
        self.status.setText(label + "…")
        self.cancel_button.setEnabled(True)
        t0 = time.perf_counter()

        def done(result: Any) -> None:
            if not self._is_alive():
                return
            self.status.setText(f"{label}: done in {time.perf_counter() - t0:.1f} s")
            if on_done is not None:
                try:
                    out = on_done(result)
                except Exception as exc:  # noqa: BLE001 - report, never crash the GUI
                    self._report(exc, label, on_error)
                    return
                if inspect.isgenerator(out):
                    self._steps = out
                    self._step_later(label, on_error)

        def failed(exc: BaseException) -> None:
            if self._is_alive():
                self._report(exc, label, on_error)

        def finish() -> None:
            self._worker = None
            if not self._is_alive():
                self._steps = None
                return
            if self._steps is not None:  # GUI steps still to run: finish after the last one
                self._finish_pending = finish
                return
            self._finish_pending = None
            self.bar.setRange(0, 1)
            self.bar.setValue(1 if self.last_error is None else 0)
            self.cancel_button.setEnabled(False)
            self.finished.emit()

        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.finished.connect(finish)
        worker.start()
        return True

    def _step_later(self, label: str, on_error: Optional[Callable[[BaseException], None]]) -> None:
        """Run the next GUI step of an ``on_done`` generator in a later event-loop turn."""
        QTimer.singleShot(0, lambda: self._step(label, on_error))

    def _step(self, label: str, on_error: Optional[Callable[[BaseException], None]]) -> None:
        """Run the next GUI step of an ``on_done`` generator."""
        steps = self._steps
        if steps is None or not self._is_alive():
            return
        try:
            next(steps)
        except StopIteration:
            self._steps = None
        except Exception as exc:  # noqa: BLE001 - report, never crash the GUI
            self._steps = None
            self._report(exc, label, on_error)
        else:
            self._step_later(label, on_error)
            return
        if self._finish_pending is not None:
            self._finish_pending()

    def _report(self, exc: BaseException, label: str, on_error: Optional[Callable[[BaseException], None]]) -> None:
        from medseg.core.errors import CancelledError

        self.last_error = exc
        if isinstance(exc, CancelledError):
            self.status.setText(f"{label}: cancelled")
        else:
            self.status.setText(f"{label} failed: {exc}")
            notify_error(f"medseg: {label} failed: {exc}")
        if on_error is not None:
            on_error(exc)


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers of one type, kept in sync with the layer list."""

    def __init__(self, viewer: Any, layer_type: str, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.layer_type = layer_type
        events = viewer.layers.events
        for ev in (events.inserted, events.removed, events.moved, events.changed):
            ev.connect(self.refresh)
        self.refresh()

    def layers(self) -> list:
        from medseg_napari._layers import is_layer_type

        return [l for l in self.viewer.layers if is_layer_type(l, self.layer_type)]

    def refresh(self, *_: Any) -> None:
        current = self.currentText()
        names = [l.name for l in self.layers()]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        elif names:
            selected = [l.name for l in self.viewer.layers.selection if l.name in names]
            self.setCurrentText(selected[0] if selected else names[-1])
        self.blockSignals(False)

    def layer(self) -> Any:
        """The chosen layer, or None."""
        name = self.currentText()
        return next((l for l in self.layers() if l.name == name), None)

    def set_layer(self, layer: Any) -> None:
        self.refresh()
        self.setCurrentText(layer.name)
