"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one.

The data goes to a unique hidden file beside the target, is flushed to disk, and is
renamed over the target with ``os.replace``. The temporary file is opened with
mode "xb" rather than created by ``tempfile.mkstemp``, whose 0600 permissions would
leave results and shared caches unreadable to other users despite their umask.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator


@contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Yields a binary file whose contents replace ``path`` when the block exits cleanly."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, payload: Any, *, indent: int = 2) -> None:
    """JSON with NaN/inf refused (they are not JSON), newline-terminated."""
    write_text(path, json.dumps(payload, indent=indent, allow_nan=False) + "\n")
