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

from medseg.errors import MedsegError

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
    try:
        return int(args.func(args) or 0)
    except MedsegError as exc:
        log.error("%s", exc)
        return 1
    except (FileNotFoundError, FileExistsError, PermissionError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
