"""Checksummed work files: what a resumable run saves under ``OUT/.work`` to continue after a kill.

A resumed run trusts its work files as much as its own memory, so a file that
was damaged on disk (a flipped bit, a truncated copy, an edit) must never flow
into the output. Every work file therefore has a sidecar ``NAME.sha256`` that
lists the sha256 and length of the bytes it vouches for.

Rewriting a file (EM's checkpoint every round, SEP's progress) must not open a
window in which a kill loses the previous version, so :func:`write` goes in
three atomic steps: the sidecar first vouches for the old *and* the new bytes,
then the data is replaced, then the sidecar keeps only the new record. After a
kill at any point the file on disk matches a record in its sidecar.

On reading, a file that matches no record of its sidecar, or has no sidecar
(damaged, edited, or written by an older version of ntga or by another tool),
is reported on stderr, deleted, and treated as absent: the caller recomputes
that piece of work, exactly as if the run had been killed before writing it.
Nothing here unpickles: arrays are stored with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ntga import atomic

SUFFIX = ".sha256"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def _record(data: bytes) -> str:
    return f"{hashlib.sha256(data).hexdigest()} {len(data)}\n"


def _records(path: Path) -> set[str]:
    try:
        return {line + "\n" for line in _sidecar(path).read_text().splitlines() if line}
    except (FileNotFoundError, UnicodeDecodeError):
        return set()


def write(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` with its checksum, never leaving the previous version unverifiable."""
    path = Path(path)
    new = _record(data)
    # The records that vouch for what is on disk now (whatever they are, the file matches one or is
    # already unusable), so no bytes need to be read back and hashed again.
    keep = "".join(sorted(r for r in _records(path) if r != new)) if path.exists() else ""
    atomic.write_text(_sidecar(path), keep + new)  # vouches for the old and the new bytes
    atomic.write_bytes(path, data)
    atomic.write_text(_sidecar(path), new)


def discard(path: str | Path, why: str) -> None:
    """Deletes a work file and its sidecar, saying why on stderr (the work is then redone)."""
    path = Path(path)
    print(f"warning: work file {path} {why}; it is deleted and its work is recomputed", file=sys.stderr)
    path.unlink(missing_ok=True)
    _sidecar(path).unlink(missing_ok=True)


def read(path: str | Path) -> bytes | None:
    """The bytes of a verified work file; None when it is absent, incomplete or corrupt (then deleted)."""
    path = Path(path)
    if not path.exists():
        _sidecar(path).unlink(missing_ok=True)  # a kill before the first version's data landed
        return None
    data = path.read_bytes()
    records = _records(path)
    if not records:
        discard(path, "has no checksum (written by an older version of ntga, or not by ntga)")
        return None
    if _record(data) not in records:
        discard(path, "does not match its checksum (damaged or edited)")
        return None
    return data


def save_arrays(path: str | Path, **arrays: Any) -> None:
    """Saves named arrays as a checksummed ``.npz`` (no pickling)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    write(path, buf.getvalue())


def load_arrays(path: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of a verified :func:`save_arrays` file, or None (absent or corrupt: recompute)."""
    data = read(path)
    if data is None:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as err:  # checksum matched but content unreadable: our own bug
        discard(path, f"is not a readable array file ({err})")
        return None


def save_array(path: str | Path, array: Any) -> None:
    """Saves one array as a checksummed ``.npy`` (readable with ``np.load(path, allow_pickle=False)`` alone)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    write(path, buf.getvalue())


def load_array(path: str | Path) -> np.ndarray | None:
    """The array of a verified :func:`save_array` file, or None (absent or corrupt: recompute)."""
    data = read(path)
    if data is None:
        return None
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # checksum matched but content unreadable: our own bug
        discard(path, f"is not a readable array file ({err})")
        return None


def save_json(path: str | Path, payload: Any) -> None:
    write(path, (json.dumps(payload, indent=1, allow_nan=False) + "\n").encode())


def load_json(path: str | Path) -> Any | None:
    data = read(path)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        discard(path, f"is not readable JSON ({err})")
        return None


def remove(path: str | Path) -> None:
    """Deletes a work file and its sidecar silently (e.g. superseded progress)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    _sidecar(path).unlink(missing_ok=True)
