"""The exceptions the CLI turns into a clear message instead of a traceback."""

import signal
from collections.abc import Iterator


class UserError(Exception):
    """Bad input from the user: the message names the file or value and says how to fix it."""


class Stopped(Exception):
    """Training stopped on SIGTERM after saving its step; `--resume` continues from there."""

    exit_code = 128 + signal.SIGTERM


def first_line(exc: BaseException) -> str:
    """An exception's message cut to its first line (database and library errors run on for pages), or
    its type when it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what caused it, outermost first (libraries such as Optuna re-raise as other types)."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__
