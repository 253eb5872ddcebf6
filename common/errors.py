"""One-line, actionable errors for bad input, and the wrapper that turns them into an exit code."""

from __future__ import annotations

import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """Bad input from the user: the message is one line that says what is wrong and how to fix it.

    Entry points (``train.py``, ``analyze.py``) catch it, print ``error: <message>`` to stderr and
    exit with code 2, so the user never sees a traceback for a mistake they can fix.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def fail(message: str) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with code 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def find_user_error(err: BaseException | None) -> UserError | None:
    """The ``UserError`` that caused ``err`` (following ``__cause__``/``__context__``), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UserError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def run_cli(main: Callable[[], object]) -> None:
    """Call ``main()``; a ``UserError`` anywhere below (even wrapped by a library) becomes one line
    on stderr and exit code 2."""
    try:
        main()
    except Exception as err:
        cause = find_user_error(err)
        if cause is None:
            raise
        fail(str(cause))
