"""Writing a dataset in each on-disk format the loaders read.

Useful to export a (sub)set for other tools, and used by the tests to build
tiny fixtures that round-trip through the loaders. Archives are written
reproducibly (sorted members, fixed timestamps), so the same arrays give the
same bytes and therefore the same content hash.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ntga.data.dataset import Arrays, Dataset

_EPOCH = 946684800  # 2000-01-01, a fixed member timestamp for reproducible archives


def _arrays(data: Arrays | Dataset) -> Arrays:
    return Arrays(data.x_train, data.y_train, data.x_test, data.y_test, tuple(data.class_names))


def _idx_bytes(a: np.ndarray) -> bytes:
    magic = 0x00000800 | a.ndim  # unsigned byte, a.ndim dimensions
    dims = b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return magic.to_bytes(4, "big") + dims + np.ascontiguousarray(a, np.uint8).tobytes()


def write_idx(directory: str | Path, data: Arrays | Dataset, *, compress: bool = True) -> Path:
    """Writes the four MNIST-style IDX files (greyscale only: C must be 1)."""
    d = _arrays(data)
    if d.x_train.shape[-1] != 1:
        raise ValueError("IDX holds greyscale images only (C = 1)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": d.x_train[..., 0],
        "train-labels-idx1-ubyte": d.y_train,
        "t10k-images-idx3-ubyte": d.x_test[..., 0],
        "t10k-labels-idx1-ubyte": d.y_test,
    }
    for name, a in files.items():
        raw = _idx_bytes(np.asarray(a))
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(raw, mtime=0))
        else:
            (directory / name).write_bytes(raw)
    return directory


def write_npz(path: str | Path, data: Arrays | Dataset) -> Path:
    """Writes ``x_train, y_train, x_test, y_test, class_names`` (uncompressed, no pickles)."""
    d = _arrays(data)
    path = Path(path)
    np.savez(
        path,
        x_train=d.x_train,
        y_train=d.y_train,
        x_test=d.x_test,
        y_test=d.y_test,
        class_names=np.array(d.class_names, dtype=str),
    )
    return path


def _encode(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format=fmt)
    return buf.getvalue()


def image_folder_members(
    data: Arrays | Dataset, fmt: str = "PNG", wrapper: str | None = None
) -> dict[str, bytes]:
    """``{relative path: encoded image}`` in the ``split/class/NNNNN.ext`` layout."""
    d = _arrays(data)
    ext = {"PNG": "png", "JPEG": "jpg", "BMP": "bmp"}.get(fmt.upper(), fmt.lower())
    prefix = f"{wrapper}/" if wrapper else ""
    members = {}
    for split in ("train", "test"):
        x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            members[f"{prefix}{split}/{d.class_names[label]}/{i:05d}.{ext}"] = _encode(img, fmt)
    return members


def write_image_folder(
    path: str | Path, data: Arrays | Dataset, *, fmt: str = "PNG", wrapper: str | None = None
) -> Path:
    """Writes ``train/<class>/*`` and ``test/<class>/*`` images.

    The container follows ``path``: ``*.zip`` a zip, ``*.tar.gz``/``*.tgz`` a
    gzipped tarball, anything else a directory. PNG (default) is lossless, so
    the loaders return exactly ``data``'s pixels (class order = sorted names,
    which ``data.class_names`` should already be for an exact round trip).
    """
    path = Path(path)
    members = image_folder_members(data, fmt, wrapper)
    name = path.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
            for rel in sorted(members):
                zf.writestr(zipfile.ZipInfo(rel, date_time=(2000, 1, 1, 0, 0, 0)), members[rel])
    elif name.endswith((".tar.gz", ".tgz")):
        with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                for rel in sorted(members):
                    info = tarfile.TarInfo(rel)
                    info.size, info.mtime, info.mode = len(members[rel]), _EPOCH, 0o644
                    tf.addfile(info, io.BytesIO(members[rel]))
    else:
        for rel, blob in members.items():
            target = path / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob)
    return path
