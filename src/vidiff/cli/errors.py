"""The two kinds of failure the command line reports, with their exit statuses."""

from __future__ import annotations


class UsageError(Exception):
    """The command line asks for something invalid (exit status 2); nothing was loaded or written."""

    exit_status = 2


class RunError(Exception):
    """A valid request failed while running: loading, generating or writing (exit status 1)."""

    exit_status = 1


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C's KeyboardInterrupt so the same clean-up runs; the exit
    status is 128 + the signal's number, as a shell reports a process the signal ended."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def one_line(text: str, limit: int, empty: str = "") -> str:
    """``text`` as one line of at most ``limit`` characters (whitespace runs become one space; a
    longer text is cut with "…"; an empty one becomes ``empty``): a key list or a tensor's repr
    must not flood a terminal, a log or a summary."""
    line = " ".join(str(text).split()) or empty
    return line if len(line) <= limit else line[: limit - 1] + "…"
