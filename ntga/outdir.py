"""The output-directory policy every command shares: never overwrite what is not ours, one writer at a time.

Rules (``ntga.generate``, ``defenses.evaluate``, ``ntga.export``):

* ``--out`` may be new, or an existing empty directory. A non-empty directory is
  used only when it holds this tool's own run (its marker file, e.g.
  ``.work/run.json`` or ``results.json``) *and* ``--resume`` is given. A
  directory holding anything else (a user's ``results.md``, photos, ...) is
  refused even with ``--resume``: nothing of the user's is ever replaced.
* While a command writes into ``--out`` it holds an advisory lock
  (``fcntl.flock``) on ``OUT/.ntga.lock``. A second command on the same
  directory is refused at once with a message naming the holder, instead of
  racing it. The kernel releases the lock when the holder exits, even on
  ``kill -9``, so a killed run never leaves a stale lock; an exclusive holder
  removes the file on a clean exit. Cooperating processes of one sharded run
  take the lock shared and one exclusive lock per shard; their (empty, hidden)
  lock files stay in the folder, since no shard can know it is the last user.
  ``flock`` is local to one machine: processes on different hosts must keep to
  distinct ``--shard``s. ``ntga.export`` needs no lock: it builds its folder
  under a private hidden name and renames it into place.
* A path that cannot be created or written gives one ``error:`` line with the
  path and the cause.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from ntga.errors import UserInputError

LOCK_NAME = ".ntga.lock"
LOCK_PREFIX = ".ntga."  # every lock file of ours starts so; they do not make a directory "not empty"


def _is_lock(name: str) -> bool:
    return name.startswith(LOCK_PREFIX) and name.endswith(".lock")


def entries(out: Path) -> list[str]:
    """Names in ``out`` other than our lock files (empty when ``out`` does not exist)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if not _is_lock(p.name))


def _require_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} exists and is not a directory; choose a directory path")


def ensure_dir(out: str | Path) -> Path:
    """Creates ``out`` (and its parents), or explains in one line why it cannot be."""
    out = Path(out)
    _require_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"cannot create --out {out}: {err.strerror or err}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserInputError(f"cannot write into --out {out}: permission denied")
    return out


def check_reusable(out: Path, *, owned: Callable[[Path], bool], resume: bool, what: str) -> None:
    """Applies the policy to ``out`` (a file where a folder should be, a user's folder, a run without --resume).

    Args:
        out: the output directory (it may not exist yet).
        owned: whether ``out`` holds a run of this tool (e.g. its marker file exists).
        resume: the user asked to continue a run there.
        what: the tool's run, for messages ("an ntga.generate run").
    """
    _require_dir(out)
    found = entries(out)
    if not found:
        return
    if not owned(out):
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise UserInputError(f"--out {out} is not empty ({shown}) and does not hold {what}; nothing there is "
                             "overwritten: choose a new or empty directory")
    if not resume:
        raise UserInputError(f"--out {out} already holds {what}; pass --resume to continue it, or choose a "
                             "new directory")


class DirLock:
    """An advisory ``flock`` on ``out/NAME``, as a context manager.

    Args:
        out: an existing directory.
        name: the lock file's name (must start with ``.ntga.`` and end with ``.lock``).
        shared: take the lock shared (cooperating shards) instead of exclusive.
        blocking: wait for the lock instead of refusing at once.
    """

    def __init__(self, out: str | Path, name: str = LOCK_NAME, *, shared: bool = False, blocking: bool = False):
        if not _is_lock(name):
            raise ValueError(f"lock names start with {LOCK_PREFIX!r} and end with '.lock', got {name!r}")
        self.out, self.path = Path(out), Path(out) / name
        self.shared, self.blocking = shared, blocking
        self._fd: int | None = None

    def _holder(self) -> str:
        try:
            text = self.path.read_text().strip()
        except OSError:
            text = ""
        return f" ({text})" if text else ""

    def acquire(self) -> "DirLock":
        mode = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | (0 if self.blocking else fcntl.LOCK_NB)
        while True:
            try:
                # O_NOFOLLOW: a planted symlink must not make us truncate and write another file.
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as err:
                raise UserInputError(f"cannot write into --out {self.out}: {err.strerror or err}") from None
            try:
                fcntl.flock(fd, mode)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise UserInputError(
                    f"--out {self.out} is in use by another run{self._holder()}; wait for it to finish, "
                    "or choose another directory") from None
            # The previous holder may have removed the file between our open and flock:
            # then we locked an orphan inode and must retry on the file now at the path.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        if not self.shared:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n".encode())
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if not self.shared:
                # Only an exclusive holder may remove the file (see acquire's inode check).
                self.path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunLocks:
    """The locks of one generation process: exclusive, or shared plus its shard's own (``--shard K/N``)."""

    def __init__(self, out: str | Path, shard: tuple[int, int] = (0, 1)):
        k, n = shard
        self._locks = ([DirLock(out)] if n == 1 else
                       [DirLock(out, shared=True), DirLock(out, f".ntga.shard-{k + 1}-of-{n}.lock")])

    def __enter__(self) -> "RunLocks":
        taken = []
        try:
            for lock in self._locks:
                taken.append(lock.acquire())
        except BaseException:
            for lock in reversed(taken):
                lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for lock in reversed(self._locks):
            lock.release()


def assembly_lock(out: str | Path) -> DirLock:
    """Serialises writing the final files of a sharded run (the loser waits, then finds them done)."""
    return DirLock(out, ".ntga.assemble.lock", blocking=True)


@contextmanager
def writing(out: str | Path, *, shard: tuple[int, int] = (0, 1), clean_on_error: bool = True) -> Iterator[bool]:
    """Creates ``out`` if needed and holds the run's locks for the block; yields whether it was new or empty.

    With ``clean_on_error``, when the block fails with a :class:`UserInputError` (a
    setting that only fails against the data, numerics that do not work out, ...)
    and ``out`` was new or empty, what the run put there is removed again, so the
    corrected rerun is not refused for a half-made directory (for commands whose
    partial work is worthless under bad settings). Only an unsharded run does
    this: it alone holds the folder exclusively, whereas a shard's "empty" folder
    may already be filling with another shard's work. Any other failure (a kill,
    a bug) leaves the work files for ``--resume``. A directory this call created
    and nothing filled is removed in any case (after the locks are released, and
    only while it is empty).
    """
    out = Path(out)
    existed = out.exists()
    ensure_dir(out)
    exclusive = shard[1] == 1
    try:
        with RunLocks(out, shard):  # refuses at once, before anything is touched, if another run holds it
            fresh = not entries(out)
            try:
                yield fresh
            except UserInputError:
                if fresh and clean_on_error and exclusive:
                    _clear(out)
                raise
    finally:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # refused or cleared: leave no directory we made for nothing


def _clear(out: Path) -> None:
    """Removes what a failed fresh run wrote (our lock files stay until released)."""
    for p in out.iterdir():
        if _is_lock(p.name):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
