"""Progress and cancel callbacks for long operations.

Long functions take two optional keyword arguments:

``progress(done, total, message)``
    called with the number of finished steps, the total (``None`` when unknown) and a short
    description. The CLI maps it to a tqdm bar, the napari plugin to a napari progress bar.
``cancel()``
    returns ``True`` when the user asked to stop; the function then raises
    :class:`medseg.core.errors.CancelledError` at the next safe point and leaves no partial output.
"""

from __future__ import annotations

from typing import Callable, Optional, Protocol

from medseg.core.errors import CancelledError

__all__ = ["ProgressCallback", "CancelCallback", "check_cancel", "report", "StepProgress"]


class ProgressCallback(Protocol):
    def __call__(self, done: int, total: Optional[int], message: str) -> None: ...


CancelCallback = Callable[[], bool]


def check_cancel(cancel: Optional[CancelCallback], what: str = "operation") -> None:
    """Raise :class:`CancelledError` if ``cancel`` says so."""
    if cancel is not None and cancel():
        raise CancelledError(f"{what} cancelled by the user")


def report(progress: Optional[ProgressCallback], done: int, total: Optional[int], message: str) -> None:
    """Call ``progress`` if it is given."""
    if progress is not None:
        progress(done, total, message)


class StepProgress:
    """Counts steps of one operation and forwards them to the callbacks.

    Parameters
    ----------
    total : int or None
        Number of steps, ``None`` if unknown.
    message : str
        Description shown with each update.
    progress, cancel : callables, optional
        The callbacks described in this module's docstring.
    """

    def __init__(
        self,
        total: Optional[int],
        message: str,
        *,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelCallback] = None,
    ) -> None:
        self.total = total
        self.message = message
        self.done = 0
        self._progress = progress
        self._cancel = cancel
        report(progress, 0, total, message)

    def step(self, n: int = 1) -> None:
        """Advance by ``n`` steps, then check for cancellation."""
        self.done += n
        report(self._progress, self.done, self.total, self.message)
        check_cancel(self._cancel, self.message)
