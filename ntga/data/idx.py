"""``idx:DIR`` - the MNIST file format (also Fashion-MNIST, KMNIST, EMNIST).

``DIR`` holds four IDX files, gzipped or not: ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``
(any name containing ``train-images``/``train-labels`` and ``t10k-images``/
``t10k-labels`` or ``test-images``/``test-labels`` and ending in ``ubyte`` or
``ubyte.gz`` matches, so ``emnist-letters-train-images-idx3-ubyte.gz`` works too).

The format, parsed here directly: a 4-byte big-endian magic number
``0x00000803`` for unsigned-byte 3-D image arrays or ``0x00000801`` for 1-D
label arrays, then one big-endian uint32 per dimension, then the bytes.
Class names are ``"0"`` .. ``str(K - 1)`` with K = largest label + 1.

The content hash covers the four files' bytes as stored (compressed or not).
Gzipped files are cached after decoding (gunzip of MNIST is most of its
load time); uncompressed files are read directly.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from ntga.data.dataset import Arrays, source_hasher, update_with_file
from ntga.data.limits import DecodeBudget, DecodeLimits
from ntga.errors import UserInputError

VERSION = 1
_MAGIC = {"images": 0x00000803, "labels": 0x00000801}
_ROLES = {
    "train_images": (("train-images",), "images"),
    "train_labels": (("train-labels",), "labels"),
    "test_images": (("t10k-images", "test-images"), "images"),
    "test_labels": (("t10k-labels", "test-labels"), "labels"),
}


def find_files(root: Path) -> dict[str, Path]:
    """The four IDX files in ``root``, by role; raises if one is missing or ambiguous."""
    found = {}
    names = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    for role, (stems, _) in _ROLES.items():
        hits = [n for n in names if any(s in n for s in stems) and n.endswith(("ubyte", "ubyte.gz"))]
        if not hits:
            raise UserInputError(
                f"idx:{root}: no {role.replace('_', ' ')} file (expected e.g. {stems[0]}-idx"
                f"{3 if 'images' in role else 1}-ubyte or the same name + .gz); found {names[:8]}"
            )
        if len(hits) > 1:
            raise UserInputError(f"idx:{root}: several {role.replace('_', ' ')} files {hits}; keep one")
        found[role] = root / hits[0]
    return found


def is_compressed(files: dict[str, Path]) -> bool:
    return any(_is_gzip(p) for p in files.values())


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def content_hash(files: dict[str, Path]) -> str:
    h = source_hasher("idx", VERSION)
    for role in _ROLES:
        h.update(role.encode() + b"\0")
        update_with_file(h, files[role])
    return h.hexdigest()


def read_idx(path: Path, kind: str, budget: DecodeBudget | None = None) -> np.ndarray:
    """Parses one IDX file: uint8 ``[N, H, W]`` for ``kind="images"`` or ``[N]`` for ``"labels"``.

    The header is read first and its declared size charged to ``budget`` before the
    (possibly gzip-compressed) body is decompressed, so a small file cannot make us
    allocate gigabytes.
    """
    budget = budget or DecodeBudget(source=str(path))
    opener = gzip.open if _is_gzip(path) else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise UserInputError(f"{path}: only {len(head)} bytes; not an IDX file")
            magic = int.from_bytes(head, "big")
            if magic != _MAGIC[kind]:
                raise UserInputError(
                    f"{path}: IDX magic number is 0x{magic:08x}, expected 0x{_MAGIC[kind]:08x} "
                    f"(unsigned-byte {kind}); is this the right file?"
                )
            ndim = magic & 0xFF
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise UserInputError(f"{path}: truncated IDX header ({4 + len(dims)} bytes)")
            shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            size = math.prod(shape)  # Python ints: a forged header cannot wrap around
            budget.charge_array(shape, str(path))
            body = f.read(size + 1)  # one byte more than declared reveals padding
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise UserInputError(f"{path}: cannot decompress ({err}); the file may be truncated") from None
    if len(body) != size:
        header = 4 + 4 * ndim
        found = f"{header + len(body)} bytes" if len(body) < size else "more bytes"
        raise UserInputError(
            f"{path}: header says {'x'.join(map(str, shape))} values ({header + size} bytes in all) but the "
            f"file has {found}; it is {'truncated' if len(body) < size else 'padded'}"
        )
    return np.frombuffer(body, np.uint8).reshape(shape)


def decode(files: dict[str, Path], source: str, limits: DecodeLimits | None = None) -> Arrays:
    budget = DecodeBudget(limits, source)
    out = {}
    for split in ("train", "test"):
        x = read_idx(files[f"{split}_images"], "images", budget)
        y = read_idx(files[f"{split}_labels"], "labels", budget)
        if len(x) != len(y):
            raise UserInputError(
                f"{source}: {files[f'{split}_images'].name} has {len(x)} images but "
                f"{files[f'{split}_labels'].name} has {len(y)} labels; they must match"
            )
        out[f"x_{split}"], out[f"y_{split}"] = x[..., None], y.astype(np.int64)
    k = int(max(out["y_train"].max(initial=0), out["y_test"].max(initial=0))) + 1
    return Arrays(class_names=tuple(str(i) for i in range(k)), **out)
