"""One exception type for every user-facing failure, and the CLI wrapper that reports it.

Library code raises :class:`UserInputError` with a message that names the bad
value and says what would be accepted. Command-line entry points wrap their
``main`` in :func:`run_cli`, which prints that one message (no traceback) and
exits with status 2, so scripts can rely on a non-zero exit.

The same happens for the failures the machine causes rather than the code: a
full disk, a read-only or forbidden path, a path that is a file where a folder
is needed. :func:`run_cli` turns an ``OSError`` with one of those causes into
``error: PATH: CAUSE`` (exit 2). Any other exception, including other
kinds of ``OSError``, keeps its traceback: those are bugs to report, not input to fix.
"""

from __future__ import annotations

import errno
import sys
from typing import Callable, Sequence

# OSErrors whose cause is the environment (disk, permissions, paths), never a bug in the code.
ENVIRONMENT_ERRNOS = frozenset({
    errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO, errno.ENOTDIR,
    errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG, errno.ELOOP,
})  # not ENOENT / EEXIST / ENOTEMPTY: where those are the user's doing, the code says so itself


def describe_os_error(err: OSError) -> str:
    """``PATH: CAUSE`` for an OSError (both paths for a rename)."""
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    where = " -> ".join(str(p) for p in paths)
    cause = err.strerror or str(err)
    return f"{where}: {cause}" if where else cause


class UserInputError(ValueError):
    """Bad input from the user: a path, a spec, a flag value or a corrupt file."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Runs ``main(argv)``; a :class:`UserInputError` or an environmental OSError becomes ``error: ...`` + exit 2."""
    try:
        code = main(argv)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(f"error: {describe_os_error(err)}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted: finished work is saved; rerun with --resume to continue", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code or 0)
