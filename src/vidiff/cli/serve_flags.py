"""The ``vidiff serve`` subcommand's flags (the server itself lives in :mod:`vidiff.server`)."""

from __future__ import annotations

import argparse

from .commands import positive_int


def _upload_limit(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MiB > 0, got {text!r}") from None
    if not 0 < value <= 10_000:
        raise argparse.ArgumentTypeError(f"expected a number of MiB > 0 and at most 10000, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1–65535, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1–65535, got {value}")
    return value


def add_serve_parser(subcommands, add_common_flags) -> None:
    """``vidiff serve``: the job API and the web page (see the README's "Server and web page")."""
    serve = subcommands.add_parser(
        "serve", help="serve the job API and the web page (a queue of videos, one worker per device)",
        description="Start an HTTP server: POST jobs to /v1/videos, watch their progress, download the videos; "
        "the page at / does the same in a browser. Jobs are kept in FOLDER/vidiff.sqlite3 and survive a restart.",
        argument_default=argparse.SUPPRESS,
    )
    serve.add_argument("--host", metavar="ADDRESS", help="address to listen on (default: 127.0.0.1, this machine only; any other needs --token)")
    serve.add_argument("--port", type=_port, metavar="N", help="TCP port (default: 8000)")
    serve.add_argument("--data", metavar="FOLDER", help="where jobs, uploads and videos are kept (default: ./vidiff-server)")
    serve.add_argument("--token", metavar="SECRET", help="require `Authorization: Bearer SECRET` on every request (or set $VIDIFF_SERVER_TOKEN)")
    serve.add_argument(
        "--model", action="append", metavar="NAME=PATH_OR_ID",
        help="a model jobs may ask for by NAME (repeatable); jobs may also name Hub ids, never local paths",
    )
    serve.add_argument("--device", choices=("auto", "cpu", "cuda"), help="auto/cuda: one worker per CUDA GPU; cpu: one CPU worker (default: auto)")
    serve.add_argument("--max-upload-mb", type=_upload_limit, metavar="X", help="largest uploaded image, in MiB (default: 20)")
    serve.add_argument("--pipelines-kept", type=positive_int, metavar="N", help="loaded pipelines each worker keeps for the next jobs (default: 2)")
    add_common_flags(serve)
