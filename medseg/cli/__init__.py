"""The ``medseg`` command.

Each subcommand lives in its own module of this package and defines
``register(subparsers) -> None``, adding a parser whose ``func`` default takes the parsed
arguments and returns an exit code. Modules are discovered, so adding a subcommand touches
no other file. The CLI parses, configures logging and progress bars, and calls one public
library function; it holds no domain logic.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from typing import Optional, Sequence

from medseg.core.errors import MedsegError

__all__ = ["main", "build_parser"]

log = logging.getLogger("medseg.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg", description="Medical image segmentation suite.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def _version() -> str:
    from medseg import __version__

    return f"medseg {__version__}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # medseg's own messages at INFO by default; other libraries' (highdicom is chatty) only
    # from -v on; -vv shows debug output everywhere.
    logging.basicConfig(level=logging.DEBUG if args.verbose >= 2 else logging.WARNING if args.verbose == 0 else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("medseg").setLevel(logging.DEBUG if args.verbose >= 2 else logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(args.func, args)


def run_command(func, args: argparse.Namespace) -> int:
    """Run a subcommand's ``func(args)`` and turn every exception into one logged line and an exit code.

    medseg's named errors and plain file errors exit 1 with their message; Ctrl-C exits 130;
    running out of memory exits 1 naming the inputs and the limit to lower; any other
    exception is a bug: one line naming the inputs, the exception and what to do, exit 70.
    ``-v`` adds the traceback.
    """
    try:
        return int(func(args) or 0)
    except MedsegError as exc:
        log.error("%s", exc)
        _trace(args)
        return 1
    except (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        log.error("%s", exc)
        _trace(args)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except MemoryError as exc:
        log.error("%s: out of memory (%s); %s", _inputs(args) or args.command, exc or "allocation failed",
                  "lower MEDSEG_MAX_VOLUME_BYTES so that oversized inputs are refused before reading, "
                  "or run on a machine with more memory")
        _trace(args)
        return 1
    except (Exception, BaseException) as exc:  # any other exception is a bug (also a native library's
        # panic, which is a BaseException): one line, traceback with -v
        if isinstance(exc, (SystemExit, GeneratorExit)):
            raise
        log.error("%s: medseg %s failed with an unexpected %s: %s. This is a bug in medseg; rerun with -v for "
                  "the traceback and report it with the input", _inputs(args) or "(no input)", args.command,
                  type(exc).__name__, _short(exc))
        _trace(args)
        return 70  # EX_SOFTWARE


def _trace(args: argparse.Namespace) -> None:
    """With -v, the traceback of the exception being handled."""
    if args.verbose:
        log.error("traceback:", exc_info=True)


def _inputs(args: argparse.Namespace) -> str:
    """The input paths named on the command line (for the one-line error of an unexpected failure)."""
    names = ("input", "image", "labels", "path", "raters", "reference", "prediction", "study_dir", "data", "model")
    found: list[str] = []
    for name in names:
        value = getattr(args, name, None)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and v:
                found.append(v)
    return ", ".join(found)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return text if len(text) <= limit else text[: limit - 3] + "..."


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
