"""``load_dataset(spec)``: parse a ``--dataset`` spec, find its loader, use the cache.

Spec forms (the registry ``SPEC_FORMS`` is what ``--help`` and errors list)::

    digits          embedded 8x8 handwritten digits (no files, no network)
    idx:DIR         MNIST-format IDX files (gzipped or not)
    folder:PATH     train/<class>/* and test/<class>/* images: a directory, .zip or .tar.gz
    npz:FILE        arrays x_train, y_train, x_test, y_test [, class_names]
    tfds:NAME       tensorflow-datasets (optional extra: pip install -e '.[tfds]')

Each loader has two phases: ``prepare`` computes the content hash from the
source bytes (cheap) and says whether decoding is worth caching; ``decode``
does the work. Only folder sources and gzipped IDX files are cached
(measured: npz, raw IDX and digits load in well under a second directly).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from ntga.data import cache, digits, folder, idx, npz, tfds_source
from ntga.data.dataset import Arrays, Dataset, check_arrays
from ntga.data.limits import DecodeLimits
from ntga.errors import UserInputError

SPEC_FORMS = {
    "digits": "embedded 8x8 handwritten digits (no files, no network)",
    "idx:DIR": "MNIST-format IDX files, gzipped or not (train-images-idx3-ubyte...)",
    "folder:PATH": "train/<class>/* and test/<class>/* images: a directory, .zip or .tar.gz",
    "npz:FILE": "numpy arrays x_train, y_train, x_test, y_test [, class_names]",
    "tfds:NAME": "tensorflow-datasets, e.g. tfds:cifar10 (pip install -e '.[tfds]')",
}


def spec_forms_text() -> str:
    return "; ".join(f"{form}: {what}" for form, what in SPEC_FORMS.items())


class Prepared(NamedTuple):
    content_hash: str
    decode: Callable[[DecodeLimits], Arrays]  # decodes within the limits (see ntga.data.limits)
    cacheable: bool


def _existing(path_text: str, spec: str, want: str) -> Path:
    if not path_text:
        raise UserInputError(f"dataset spec {spec!r} names no path; write it as {want}")
    path = Path(os.path.expanduser(path_text))
    if not path.exists():
        raise UserInputError(f"{spec}: {path} does not exist")
    return path


def _prepare_digits(arg: str, spec: str) -> Prepared:
    if arg:
        raise UserInputError(f"dataset spec {spec!r}: 'digits' takes no argument")
    arrays, h = digits.load()
    return Prepared(h, lambda limits: arrays, False)


def _prepare_idx(arg: str, spec: str) -> Prepared:
    root = _existing(arg, spec, "idx:DIR")
    if not root.is_dir():
        raise UserInputError(
            f"{spec}: {root} is not a directory; idx: needs the folder holding the four IDX files"
        )
    files = idx.find_files(root)
    return Prepared(idx.content_hash(files), lambda limits: idx.decode(files, spec, limits), idx.is_compressed(files))


def _prepare_folder(arg: str, spec: str) -> Prepared:
    path = _existing(arg, spec, "folder:PATH")
    return Prepared(folder.content_hash(path), lambda limits: folder.decode(path, spec, limits), True)


def _prepare_npz(arg: str, spec: str) -> Prepared:
    path = _existing(arg, spec, "npz:FILE")
    if not path.is_file():
        raise UserInputError(f"{spec}: {path} is not a file; npz: needs a .npz file")
    return Prepared(npz.content_hash(path), lambda limits: npz.decode(path, spec, limits), False)


def _prepare_tfds(arg: str, spec: str) -> Prepared:
    if not arg:
        raise UserInputError(
            f"dataset spec {spec!r} names no dataset; write it as tfds:NAME, e.g. tfds:mnist"
        )
    arrays, h = tfds_source.load(arg)
    return Prepared(h, lambda limits: arrays, False)


#: kind -> prepare(argument, spec); a plain dict registry so new kinds are one line.
LOADERS: dict[str, Callable[[str, str], Prepared]] = {
    "digits": _prepare_digits,
    "idx": _prepare_idx,
    "folder": _prepare_folder,
    "npz": _prepare_npz,
    "tfds": _prepare_tfds,
}


def _guess_kind(path: Path) -> str | None:
    """The likely prefix for a bare path given as a spec, or None if it is no path."""
    try:
        if path.is_file():
            return "npz" if path.suffix == ".npz" else "folder"
        if path.is_dir():
            return "idx" if any("idx" in p.name for p in path.iterdir()) else "folder"
    except OSError:
        pass
    return None


def parse_spec(spec: str) -> tuple[str, str]:
    """``"idx:/data/mnist"`` -> ``("idx", "/data/mnist")``; raises on unknown forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserInputError(f"empty dataset spec; accepted forms: {spec_forms_text()}")
    kind, sep, arg = spec.strip().partition(":")
    if kind in LOADERS and (sep or kind == "digits"):
        return kind, arg
    guess = _guess_kind(Path(os.path.expanduser(spec)))
    hint = f" (it is a path: did you mean {guess}:{spec}?)" if guess else ""
    raise UserInputError(f"unknown dataset spec {spec!r}{hint}; accepted forms: {spec_forms_text()}")


def is_dataset_spec(text: str) -> bool:
    """Whether ``text`` is a well-formed dataset spec (:func:`parse_spec` accepts it; nothing is read)."""
    try:
        parse_spec(text)
    except UserInputError:
        return False
    return True


@dataclass(frozen=True)
class LoadInfo:
    """How a dataset was loaded: for summaries and logs, not for results."""

    kind: str
    from_cache: bool
    cache_file: Path | None  # where it was read from or written to; None when not cached
    seconds: float


def load_dataset_info(
    spec: str, *, cache_dir: str | Path | None = None, use_cache: bool = True, limits: DecodeLimits | None = None
) -> tuple[Dataset, LoadInfo]:
    """:func:`load_dataset` plus how it was served (cache hit, file, wall time)."""
    start = time.perf_counter()
    kind, arg = parse_spec(spec)
    spec = spec.strip()
    prepared = LOADERS[kind](arg, spec)
    arrays, from_cache, path = None, False, None
    if use_cache and prepared.cacheable:
        path = cache.cache_path(cache.resolve_cache_dir(cache_dir), kind, prepared.content_hash)
        arrays = cache.read_cache(path, prepared.content_hash)
        from_cache = arrays is not None
    if arrays is None:
        # Validate before caching, so a bad source raises its own error every time
        # instead of leaving a cache file that is then discarded as corrupt.
        arrays = check_arrays(prepared.decode(limits or DecodeLimits()), spec)
        if path is not None and not cache.write_cache(path, prepared.content_hash, arrays):
            path = None
    ds = Dataset(spec=spec, content_hash=prepared.content_hash, **arrays._asdict())
    return ds, LoadInfo(kind, from_cache, path, time.perf_counter() - start)


def load_dataset(spec: str, *, cache_dir: str | Path | None = None, use_cache: bool = True,
                 limits: DecodeLimits | None = None) -> Dataset:
    """Loads the dataset named by a ``--dataset`` spec.

    Args:
      spec: ``digits``, ``idx:DIR``, ``folder:PATH``, ``npz:FILE`` or ``tfds:NAME``.
      cache_dir: where decoded arrays are cached; default ``$NTGA_CACHE_DIR`` or
        ``~/.cache/ntga``.
      use_cache: False to neither read nor write the cache.
      limits: the largest image side and decoded size to accept (default
        :class:`DecodeLimits`); checked from headers before pixels are decoded.

    Returns:
      A :class:`Dataset` (uint8 ``[N, H, W, C]`` images, int64 labels).

    Raises:
      UserInputError: unknown spec, missing path, or a malformed source, with
        one message naming the file and the problem.
    """
    return load_dataset_info(spec, cache_dir=cache_dir, use_cache=use_cache, limits=limits)[0]
