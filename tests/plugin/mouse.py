"""Real mouse and keyboard events on a napari canvas, through Qt's public API only.

The canvas widget is found among the children of the window a docked widget lives in (no
private napari attribute), and a napari world point is mapped to a canvas pixel from the
public camera (``center``, ``zoom``) for the two displayed axes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def canvas_of(viewer: Any, docked: Any) -> Any:
    """The Qt widget of ``viewer``'s canvas; ``docked`` is a widget docked in that viewer."""
    from qtpy.QtWidgets import QWidget

    for w in docked.window().findChildren(QWidget):
        if type(w).__name__ == "CanvasBackendDesktop":  # vispy's Qt canvas
            return w
    raise AssertionError("no vispy canvas found in the viewer's window")


def world_to_pixel(viewer: Any, canvas: Any, world: Sequence[float]) -> tuple[float, float]:
    """Canvas pixel ``(x, y)`` of a world point on the two displayed axes (2D view)."""
    cam = viewer.camera
    rows, cols = viewer.dims.order[-2], viewer.dims.order[-1]  # displayed: rows down, columns right
    c_row, c_col = (float(v) for v in tuple(cam.center)[-2:])
    x = (world[cols] - c_col) * cam.zoom + canvas.width() / 2.0
    y = (world[rows] - c_row) * cam.zoom + canvas.height() / 2.0
    return float(x), float(y)


def _send(canvas: Any, kind: str, xy: tuple[float, float], modifiers: Any = None) -> None:
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    mods = modifiers if modifiers is not None else Qt.KeyboardModifier.NoModifier
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    kinds = {"press": (QEvent.Type.MouseButtonPress, left, left),
             "move": (QEvent.Type.MouseMove, none, left),
             "release": (QEvent.Type.MouseButtonRelease, left, none)}
    etype, button, buttons = kinds[kind]
    p = QPointF(*xy)
    QApplication.sendEvent(canvas, QMouseEvent(etype, p, canvas.mapToGlobal(p), button, buttons, mods))
    QApplication.processEvents()


def click(viewer: Any, canvas: Any, world: Sequence[float], *, shift: bool = False) -> None:
    """A left click at a world point (Shift held when ``shift``)."""
    from qtpy.QtCore import Qt

    mods = Qt.KeyboardModifier.ShiftModifier if shift else None
    xy = world_to_pixel(viewer, canvas, world)
    _send(canvas, "press", xy, mods)
    _send(canvas, "release", xy, mods)


def hover(viewer: Any, canvas: Any, world: Sequence[float]) -> None:
    """The mouse enters the canvas and moves (no button) to a world point."""
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QEnterEvent, QMouseEvent
    from qtpy.QtWidgets import QApplication

    p = QPointF(*world_to_pixel(viewer, canvas, world))
    g = QPointF(canvas.mapToGlobal(p))
    QApplication.sendEvent(canvas, QEnterEvent(p, p, g))
    none = Qt.MouseButton.NoButton
    QApplication.sendEvent(canvas, QMouseEvent(QEvent.Type.MouseMove, p, g, none, none,
                                               Qt.KeyboardModifier.NoModifier))
    QApplication.processEvents()


def drag(viewer: Any, canvas: Any, worlds: Sequence[Sequence[float]]) -> None:
    """A left-button drag through world points (press on the first, release on the last)."""
    pts = [world_to_pixel(viewer, canvas, w) for w in worlds]
    _send(canvas, "press", pts[0])
    for xy in pts[1:]:
        _send(canvas, "move", xy)
    _send(canvas, "release", pts[-1])


def key(canvas: Any, letter: str, *, ctrl: bool = False, shift: bool = False) -> None:
    """A key press on the canvas (napari's key bindings: Ctrl-Z undo, Ctrl-Shift-Z redo)."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication

    mods = Qt.KeyboardModifier.NoModifier
    if ctrl:
        mods |= Qt.KeyboardModifier.ControlModifier
    if shift:
        mods |= Qt.KeyboardModifier.ShiftModifier
    QTest.keyClick(canvas, getattr(Qt.Key, f"Key_{letter.upper()}"), mods)
    QApplication.processEvents()
