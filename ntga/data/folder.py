"""``folder:PATH`` - class sub-folders of images in a directory, ``.zip`` or tarball.

Layout (one optional wrapping folder is tolerated, e.g. ``cifar10/train/...``)::

    train/<class>/<image>    test/<class>/<image>

Classes are the sorted class-folder names and must be the same under ``train/``
and ``test/``. Examples are ordered class by class, and by file path within a
class, so a directory, a zip and a tarball of the same files give the same
arrays. Hidden files and folders (``.DS_Store``, ``._*``), ``__MACOSX/``,
``Thumbs.db`` and ``desktop.ini`` are skipped; files beside ``train/`` and
``test/`` (README, LICENSE) are ignored; anything else that is not a
decodable image is an error naming the file. Pixel-mode conversions are in
:mod:`ntga.data.images`.

Tarballs (``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz``/``.tar``) are decoded in
one streaming pass, member by member, with nothing extracted to disk; the
compressed stream is read to its end so a truncated archive is always detected
(gzip/bz2/xz check their trailers). Measured on this project's 2-core machine,
a thread pool slowed decoding of 32x32 JPEGs (Pillow's per-image Python
overhead holds the GIL) and a process pool gave no clear gain on shared cores,
so decoding is sequential; the on-disk cache makes every later load fast.

The content hash is sha256 of the archive bytes, or for a directory of every
non-skipped file's relative path and bytes (and every empty folder's path) in
sorted order.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ntga.data.dataset import Arrays, source_hasher, update_with_file
from ntga.data.images import ImageStack, decode_image
from ntga.data.limits import DecodeBudget, DecodeLimits
from ntga.errors import UserInputError

VERSION = 1
SPLITS = ("train", "test")
_SKIPPED_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar")
_ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError, lzma.LZMAError)
_LAYOUT = "expected train/<class>/<image> and test/<class>/<image> (optionally inside one wrapping folder)"

# An entry: (relative posix path, kind "file" | "dir" | "other", reader of the file's bytes).
Entry = tuple[str, str, Callable[[], bytes] | None]


def _skipped(parts: list[str]) -> bool:
    return any(p.startswith(".") or p in _SKIPPED_NAMES for p in parts)


def _container(path: Path) -> str:
    if path.is_dir():
        return "dir"
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise UserInputError(
        f"folder:{path}: not a directory, .zip or tarball (.tar.gz, .tgz, .tar.bz2, .tar.xz, .tar)"
    )


def _walk(root: Path) -> Iterator[tuple[str, Path, bool]]:
    """(relative posix path, path, is_dir) for every non-skipped entry, in sorted order.

    Symbolic links are followed (class folders linked from elsewhere are common), but
    a link loop (a folder inside itself, which would otherwise recurse until ELOOP or,
    with several links, practically forever) and a link that leads nowhere are errors.
    """
    ids: dict[Path, tuple[int, int]] = {}  # every folder read so far -> its (device, inode)

    def refuse(err: OSError) -> None:
        raise UserInputError(f"folder:{root}: cannot read {err.filename} ({err.strerror})")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=refuse):
        here = Path(dirpath)
        st = os.stat(here)
        ident = (st.st_dev, st.st_ino)
        rel_dir = here.relative_to(root)
        # A loop is a folder that is its own ancestor; two links to one folder side by side are not.
        if any(ids.get(parent) == ident for parent in here.parents):
            raise UserInputError(f"folder:{root}: {rel_dir.as_posix()} leads back to a folder that contains it "
                                 "(a symbolic-link loop); remove that link")
        ids[here] = ident
        dirnames[:] = sorted(d for d in dirnames if not _skipped([d]))
        for d in dirnames:
            yield (rel_dir / d).as_posix(), Path(dirpath) / d, True
        for f in sorted(filenames):
            if not _skipped([f]):
                if not (Path(dirpath) / f).exists():
                    raise UserInputError(f"folder:{root}: {(rel_dir / f).as_posix()} is a symbolic link that leads "
                                         "nowhere (broken, or a loop)")
                yield (rel_dir / f).as_posix(), Path(dirpath) / f, False


def content_hash(path: Path) -> str:
    h = source_hasher("folder", VERSION)
    if path.is_dir():
        for rel, p, is_dir in sorted(_walk(path)):
            if not is_dir:
                h.update(rel.encode() + b"\0")
                update_with_file(h, p)
            elif not any(not _skipped([c.name]) for c in p.iterdir()):
                # An empty folder holds no file to hash but changes what the layout check says
                # (an empty class, a nested folder): without it a cached decode of the same files
                # would be served for an invalid layout. Valid layouts keep their hash.
                h.update(b"empty folder\0" + rel.encode() + b"\0")
    else:
        update_with_file(h, path)
    return h.hexdigest()


def _iter_dir(root: Path) -> Iterator[Entry]:
    for rel, p, is_dir in _walk(root):
        yield rel, "dir" if is_dir else "file", (None if is_dir else p.read_bytes)


def _iter_zip(path: Path) -> Iterator[Entry]:
    with zipfile.ZipFile(path) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            name = info.filename.replace("\\", "/")
            yield (
                name,
                "dir" if info.is_dir() else "file",
                (None if info.is_dir() else lambda i=info: zf.read(i)),
            )


def _open_compressed(path: Path):
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic[:3] == b"BZh":
        return bz2.open(path, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb")
    return open(path, "rb")


def _iter_tar(path: Path) -> Iterator[Entry]:
    # We decompress ourselves (not tarfile's "r|gz") because gzip/bz2/lzma
    # verify the stream's end; tarfile alone can stop early on a cut archive.
    with _open_compressed(path) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            for m in tf:
                kind = "dir" if m.isdir() else "file" if m.isfile() else "other"
                reader = (lambda m=m: tf.extractfile(m).read()) if kind == "file" else None
                yield m.name, kind, reader
        while stream.read(1 << 20):  # drain to the trailer: raises if truncated or corrupt
            pass


class _Collector:
    """Places entries into train/test x class, decoding images as they stream past."""

    def __init__(self, source: str, budget: DecodeBudget):
        self.source = source
        self.budget = budget
        self.wrapper: str | None | bool = False  # False: not yet seen
        self.files = {s: {} for s in SPLITS}  # split -> class -> [(relpath, stack index)]
        self.dirs = {s: set() for s in SPLITS}
        self.images = ImageStack()

    def _where(self, rel: str) -> str:
        return f"{rel} in {self.source}"

    def _locate(self, parts: list[str], rel: str) -> list[str] | None:
        """Parts below the wrapper starting at train/ or test/, or None for stray entries."""
        if parts[0] in SPLITS:
            wrapper, rest = None, parts
        elif len(parts) >= 2 and parts[1] in SPLITS:
            wrapper, rest = parts[0], parts[1:]
        else:
            return None
        if self.wrapper is False:
            self.wrapper = wrapper
        elif wrapper != self.wrapper:
            raise UserInputError(
                f"{self.source}: train/test folders found both at the top level and inside "
                f"{(wrapper or self.wrapper)!r}/ (at {rel}); {_LAYOUT}"
            )
        return rest

    def add(self, rel: str, kind: str, read: Callable[[], bytes] | None) -> None:
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if not parts or _skipped(parts):
            return
        rest = self._locate(parts, rel)
        if rest is None or len(rest) == 1:
            return  # README, LICENSE, or the train/ and test/ folders themselves
        split = rest[0]
        if kind == "dir":
            if len(rest) == 2:
                self.dirs[split].add(rest[1])
                return
            raise UserInputError(f"{self._where(rel)}: nested folder inside a class folder; {_LAYOUT}")
        if len(rest) == 2:
            raise UserInputError(f"{self._where(rel)}: file directly inside {split}/; {_LAYOUT}")
        if len(rest) > 3:
            raise UserInputError(f"{self._where(rel)}: file nested inside a class folder; {_LAYOUT}")
        if kind != "file":
            raise UserInputError(f"{self._where(rel)}: links and special files are not supported")
        img = decode_image(read(), self._where(rel), self.budget)
        self.images.add(img, self._where(rel))
        self.files[split].setdefault(rest[1], []).append((rel, len(self.images) - 1))

    def finish(self) -> Arrays:
        classes = {s: set(self.files[s]) | self.dirs[s] for s in SPLITS}
        for s in SPLITS:
            if not classes[s]:
                raise UserInputError(f"{self.source}: no class folders under {s}/; {_LAYOUT}")
        if classes["train"] != classes["test"]:
            only_train = sorted(classes["train"] - classes["test"])
            only_test = sorted(classes["test"] - classes["train"])
            raise UserInputError(
                f"{self.source}: class folders differ between train/ and test/ "
                f"(only in train: {only_train}; only in test: {only_test}); both need the same classes"
            )
        for s in SPLITS:
            empty = sorted(c for c in classes[s] if not self.files[s].get(c))
            if empty:
                raise UserInputError(f"{self.source}: empty class folder {s}/{empty[0]} (no images)")
        names = tuple(sorted(classes["train"]))
        out = {}
        for s in SPLITS:
            ordered = [sorted(self.files[s][c]) for c in names]
            out[f"x_{s}"] = self.images.stack([i for group in ordered for _, i in group], self.images.colour)
            out[f"y_{s}"] = np.repeat(np.arange(len(names), dtype=np.int64), [len(g) for g in ordered])
        return Arrays(class_names=names, **out)


def decode(path: Path, source: str, limits: DecodeLimits | None = None) -> Arrays:
    """Decodes every image under ``path`` (directory, zip or tarball) into arrays, within ``limits``."""
    kind = _container(path)
    entries = {"dir": _iter_dir, "zip": _iter_zip, "tar": _iter_tar}[kind](path)
    collector = _Collector(source, DecodeBudget(limits, source))
    try:
        for rel, entry_kind, read in entries:
            collector.add(rel, entry_kind, read)
    except _ARCHIVE_ERRORS as err:
        what = "directory" if kind == "dir" else f"{kind} archive"
        hint = "" if kind == "dir" else "; it may be truncated or corrupt"
        raise UserInputError(
            f"{source}: cannot read the {what} ({type(err).__name__}: {err}){hint}"
        ) from None
    return collector.finish()
