"""One error hierarchy for medseg.

Every class subclasses :class:`MedsegError` and also the builtin exception a caller would
naturally catch (``ValueError``, ``FileNotFoundError``, ...). Messages name the argument or
file, say what was expected and what was found, and give the fix.
"""

from __future__ import annotations

__all__ = [
    "MedsegError",
    "InputError",
    "GeometryError",
    "FileFormatError",
    "DicomError",
    "SeriesSelectionError",
    "ConfigError",
    "ModelError",
    "CheckpointError",
    "PromptError",
    "CancelledError",
    "DependencyError",
    "OutputError",
    "OutputExistsError",
    "ResourceLimitError",
    "SeriesChangedError",
]


class MedsegError(Exception):
    """Base class of every error medseg raises on purpose."""


class InputError(MedsegError, ValueError):
    """An argument has the wrong shape, type or value."""


class GeometryError(InputError):
    """Two grids do not match, or an affine is not a valid voxel-to-LPS transform."""


class _PathProblem(MedsegError):
    """An error about one file or folder; the message is ``"<path>: <problem>. <fix>"``."""

    def __init__(self, path: object, problem: str, fix: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        msg = f"{self.path}: {problem}"
        if fix:
            msg += f". {fix}"
        super().__init__(msg)


class FileFormatError(_PathProblem, OSError):
    """A file cannot be read or written as the format it claims to be."""


class DicomError(FileFormatError):
    """A DICOM file or series is unreadable or inconsistent."""


class SeriesSelectionError(InputError):
    """A DICOM folder holds no series, or the requested one is not there."""


class ConfigError(MedsegError, ValueError):
    """A YAML configuration is invalid (unknown key, wrong type, bad value)."""


class ModelError(MedsegError, RuntimeError):
    """A model cannot be built, loaded or run."""


class CheckpointError(ModelError):
    """A checkpoint is unsafe (pickled code) or does not match its network."""


class PromptError(InputError):
    """An interactive prompt is outside the volume or in the wrong space."""


class CancelledError(MedsegError):
    """The user cancelled a long operation through its ``cancel`` callback."""


class DependencyError(MedsegError, ImportError):
    """An optional dependency is missing; the message gives the install line."""


class OutputError(_PathProblem, OSError):
    """An output path is unsafe or unusable: it is (or lies inside) an input, it exists and
    overwriting was not asked for, or it is a folder where a file is expected (or the reverse)."""


class OutputExistsError(OutputError, FileExistsError):
    """An output exists and ``overwrite`` (``--overwrite``) was not given."""


class ResourceLimitError(_PathProblem, MemoryError):
    """An input declares more data than the configured memory limit allows (checked before allocating)."""


class SeriesChangedError(MedsegError, RuntimeError):
    """A series' files changed (added, removed, grown, rewritten) between discovery and loading."""
