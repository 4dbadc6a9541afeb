"""Exceptions that carry the CLI's exit codes.

Library code raises these; ``cli.py`` turns them into a one-line message on stderr and the exit
code below. Nothing else in the package calls ``sys.exit``.

| code | meaning                                                    |
|------|------------------------------------------------------------|
| 0    | ok                                                         |
| 1    | runtime failure (``UcanRuntimeError``, unexpected errors)  |
| 2    | bad usage or input (``InputError``)                        |
| 3    | a ``--fail-if`` gate failed (``GateFailed``)               |
| 4    | nothing to do: no eligible unit, nothing written           |
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_INPUT = 2
EXIT_GATE = 3
EXIT_NOTHING = 4


class UcanError(Exception):
    """Base class: a message meant for the user and the exit code that goes with it."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InputError(UcanError):
    """Bad usage or bad input (a file, a line, a field, an option). Exit 2."""

    exit_code = EXIT_INPUT


class UcanRuntimeError(UcanError):
    """Something failed while computing (NaN statistics, out of memory, ...). Exit 1."""

    exit_code = EXIT_RUNTIME


class GateFailed(UcanError):
    """A ``--fail-if`` gate did not hold. Exit 3 (the report is written first)."""

    exit_code = EXIT_GATE


class NothingToDo(UcanError):
    """No eligible unit: nothing to attenuate, nothing written. Exit 4."""

    exit_code = EXIT_NOTHING

    def __init__(self, message: str, details: dict | None = None, result=None):
        super().__init__(message)
        self.details = details or {}
        #: the k = 0 ``ScoreResult`` when scoring raised this: every per-unit array, so callers can
        #: explain the decision without recomputing it.
        self.result = result


class Terminated(KeyboardInterrupt):
    """Raised by the command line's SIGTERM handler (``cli.main``), so that a terminated run
    unwinds like Ctrl-C: temporary outputs are removed, nothing half-written stays. Exit 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum
