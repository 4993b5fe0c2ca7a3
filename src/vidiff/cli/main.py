"""``vidiff`` entry point: parse, run, and turn failures into one line on stderr and an exit status.

Exit statuses: 0 done; 2 a usage error (bad flag or input, existing output…), nothing loaded or
written; 1 a runtime error (loading, generating or writing failed); 130 interrupted (Ctrl-C), 143
(SIGTERM) or 129 (SIGHUP), after the same clean-up. A closed stdout is no failure.
``--debug`` adds the traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from .errors import Interrupted, RunError, UsageError, one_line

_MESSAGE_LIMIT = 500  # characters of an error message; --debug shows the whole exception


def _configure_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vidiff: %(message)s"))
    root = logging.getLogger("vidiff")
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    # Python warnings and transformers' advisories: one "vidiff: warning: …" line each, or nothing.
    from .warning_lines import route_warnings

    route_warnings()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``vidiff`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    # SIGTERM/SIGHUP would end the process on the spot, leaving temporaries (and, mid-commit,
    # moved-aside originals); raised as an exception instead, they run the clean-up Ctrl-C runs.
    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            try:
                previous[name] = signal.signal(getattr(signal, name), _raise_interrupted)
            except ValueError:  # not the main thread: signals are not ours to handle
                pass
    try:
        return _main(argv)
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), signal.SIG_DFL if handler is None else handler)


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        # Imported here so that `vidiff --help` errors, too, come out as one line.
        from .commands import COMMANDS
        from .parser import build_parser

        explicit = vars(build_parser().parse_args(argv))
        name = explicit.pop("command", None)
        if name is None:
            raise UsageError("choose a command: svd, i2vgen-xl, animatediff, wan, demo, serve or batch (see `vidiff --help`)")
        _configure_logging(explicit.get("quiet", False))
        show_progress = not explicit.get("quiet", False) and (sys.stderr.isatty() or explicit.get("progress", False))
        if name == "batch":
            from ..batch.command import main_batch

            return main_batch(explicit, show_progress)
        if name == "serve":
            from ..server.serve import serve

            return serve(explicit)
        if name == "demo":
            from .demo import run_demo

            written = run_demo(explicit, show_progress)
        else:
            from .run import run

            written = run(COMMANDS[name], explicit, show_progress)
        _print_paths(written)
        return 0
    except (UsageError, RunError) as error:
        return _fail(error, error.exit_status, debug)
    except KeyboardInterrupt as interrupt:
        signum = interrupt.signum if isinstance(interrupt, Interrupted) else signal.SIGINT
        what = "interrupted" if signum == signal.SIGINT else f"terminated ({signal.Signals(signum).name})"
        print(f"vidiff: {what}; no partial output was left behind", file=sys.stderr)
        return 128 + signum
    except Exception as error:  # noqa: BLE001 - the CLI reports every failure as one line
        return _fail(error, 1, debug, prefix=f"{type(error).__name__}: ")


def _print_paths(paths) -> None:
    """Print the written paths; a reader that has gone away (`vidiff … | true`) is no failure:
    the outputs are written."""
    try:
        for path in paths:
            print(path)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would fail again flushing stdout at exit ("Exception ignored…"): point it at devnull.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _fail(error: BaseException, status: int, debug: bool, prefix: str = "") -> int:
    if debug:
        traceback.print_exception(error)
    message = one_line(str(error), _MESSAGE_LIMIT, empty=type(error).__name__)
    hint = "" if debug else " (--debug shows the traceback)" if status == 1 else ""
    print(f"vidiff: error: {prefix}{message}{hint}", file=sys.stderr)
    return status
