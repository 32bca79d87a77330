"""One exception type for every user-facing failure, and the CLI wrapper that reports it.

Library code raises :class:`UserInputError` with a message that names the bad
value and says what would be accepted. Command-line entry points wrap their
``main`` in :func:`run_cli`, which prints that one message (no traceback) and
exits with status 2, so scripts can rely on a non-zero exit.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence


class UserInputError(ValueError):
    """Bad input from the user: a path, a spec, a flag value or a corrupt file."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Runs ``main(argv)`` and turns :class:`UserInputError` into ``error: ...`` + exit 2."""
    try:
        code = main(argv)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun with --resume to continue", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code or 0)
