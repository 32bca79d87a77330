"""On-disk cache of decoded datasets: one uncompressed ``.npz`` per source content hash.

Decoding 60,000 JPEGs takes seconds; reading the decoded arrays back takes a
fraction of that. The file name is the source's content hash, which already
covers every byte of the source and the loader version, so a changed source or
a changed decoder gets a new file and a stale entry is never served (old
entries are simply left behind; delete the folder to reclaim space).

Robustness rather than trust: files are written to a temporary name and moved
into place with ``os.replace`` (readers never see half a file, concurrent
writers are harmless), read with ``allow_pickle=False``, and fully validated;
an unreadable or inconsistent file is deleted with a warning and rebuilt. A
cache that cannot be written (read-only disk, quota) costs speed, not the run.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ntga import atomic
from ntga.data.dataset import Arrays, check_arrays

#: Bump when the layout of the cache file itself changes.
CACHE_FORMAT = 1
_ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$NTGA_CACHE_DIR``, else ``$XDG_CACHE_HOME/ntga`` (``~/.cache/ntga``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("NTGA_CACHE_DIR"):
        return Path(os.environ["NTGA_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ntga"


def cache_path(cache_dir: Path, kind: str, content_hash: str) -> Path:
    return cache_dir / f"{kind}-{content_hash}.npz"


def read_cache(path: Path, content_hash: str) -> Arrays | None:
    """The cached arrays, or None when absent; a corrupt file is deleted (with a warning)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["cache_format"]) != CACHE_FORMAT or str(z["content_hash"]) != content_hash:
                raise ValueError("written for another format or source")
            arrays = Arrays(*(z[k] for k in _ARRAY_KEYS), tuple(str(n) for n in z["class_names"]))
        return check_arrays(arrays, str(path))
    except Exception as err:  # noqa: BLE001 - any failure means "rebuild", never "crash"
        warnings.warn(
            f"discarding unreadable dataset cache {path} ({err}); rebuilding it", RuntimeWarning, stacklevel=2
        )
        try:
            path.unlink()
        except OSError:
            pass
        return None


def write_cache(path: Path, content_hash: str, arrays: Arrays) -> bool:
    """Writes ``arrays`` atomically; returns False (with a warning) if the cache is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_open(path) as f:
            # Uncompressed: the point of the cache is load speed; JPEG sources are
            # already small and re-compressing the pixels would cost the gain.
            np.savez(
                f,
                **{k: getattr(arrays, k) for k in _ARRAY_KEYS},
                class_names=np.array(arrays.class_names, dtype=str),
                content_hash=np.array(content_hash),
                cache_format=np.array(CACHE_FORMAT),
            )
        return True
    except OSError as err:
        warnings.warn(
            f"could not write dataset cache {path} ({err}); continuing without it",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
