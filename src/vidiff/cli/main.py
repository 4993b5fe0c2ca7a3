"""``vidiff`` entry point: parse, run, and turn failures into one line on stderr and an exit status.

Exit statuses: 0 done; 2 a usage error (bad flag or input, existing output…), nothing loaded or
written; 1 a runtime error (loading, generating or writing failed); 130 interrupted (Ctrl-C).
``--debug`` adds the traceback.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence

from .errors import RunError, UsageError


def _configure_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vidiff: %(message)s"))
    root = logging.getLogger("vidiff")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vidiff`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        # Imported here so that `vidiff --help` errors, too, come out as one line.
        from .commands import COMMANDS
        from .parser import build_parser

        explicit = vars(build_parser().parse_args(argv))
        name = explicit.pop("command", None)
        if name is None:
            raise UsageError("choose a command: svd, i2vgen-xl, animatediff or demo (see `vidiff --help`)")
        _configure_logging(explicit.get("quiet", False))
        show_progress = not explicit.get("quiet", False) and (sys.stderr.isatty() or explicit.get("progress", False))
        if name == "demo":
            from .demo import run_demo

            written = run_demo(explicit, show_progress)
        else:
            from .run import run

            written = run(COMMANDS[name], explicit, show_progress)
        for path in written:
            print(path)
        return 0
    except (UsageError, RunError) as error:
        return _fail(error, error.exit_status, debug)
    except KeyboardInterrupt:
        print("vidiff: interrupted; no partial output was left behind", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the CLI reports every failure as one line
        return _fail(error, 1, debug, prefix=f"{type(error).__name__}: ")


def _fail(error: BaseException, status: int, debug: bool, prefix: str = "") -> int:
    if debug:
        traceback.print_exception(error)
    message = " ".join(str(error).split()) or type(error).__name__  # one line
    hint = "" if debug else " (--debug shows the traceback)" if status == 1 else ""
    print(f"vidiff: error: {prefix}{message}{hint}", file=sys.stderr)
    return status
