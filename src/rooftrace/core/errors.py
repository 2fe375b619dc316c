"""The one error type users see (:class:`RooftraceError`, one line, exit 2) and the skip policy: strict mode
and the tally of skipped items that batch commands turn into exit 1."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator


class RooftraceError(Exception):
    """An error about the user's input or environment, with a message meant for the user.

    The CLI prints it without a traceback. Messages name the file (and record) and the problem.
    """


STRICT: ContextVar[bool] = ContextVar("rooftrace_strict", default=False)


@contextmanager
def strict_mode(on: bool = True) -> Iterator[None]:
    """Within this block, the first skipped item (:meth:`LoadReport.skip`, a dropped footprint)
    raises :class:`RooftraceError` instead of being reported at the end (the CLI's ``--strict``)."""
    token = STRICT.set(on)
    try:
        yield
    finally:
        STRICT.reset(token)


class SkipTally:
    """How many items were skipped while :func:`tally_skips` was on (the CLI's exit status 1)."""

    def __init__(self) -> None:
        self.n = 0


_TALLY: ContextVar[SkipTally | None] = ContextVar("rooftrace_skip_tally", default=None)


@contextmanager
def tally_skips() -> Iterator[SkipTally]:
    """Count every item skipped by any reader or batch command within this block."""
    tally = SkipTally()
    token = _TALLY.set(tally)
    try:
        yield tally
    finally:
        _TALLY.reset(token)


def count_skip() -> None:
    tally = _TALLY.get()
    if tally is not None:
        tally.n += 1


def is_strict() -> bool:
    """Whether :func:`strict_mode` is on."""
    return STRICT.get()
