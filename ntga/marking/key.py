"""The private key of a radioactive marking: what proves use of the data later, and must never be published.

A key directory (``ntga.generate --method radioactive --key-out DIR``) holds::

    radioactive_key.json   the marker and description: key hash, the 256-bit secret the carriers
                           come from, K, feature size d, image shape, class names, budget, dataset
                           spec and content hash, the poison directory it belongs to
    carriers.npy           float64 [K, d] unit carriers u_k (one per class)
    marking_net/           the marking network phi_0 (``ntga.models.saved``: model.json + params.npz)
    marked.npz             source_indices [M], x_marked / x_original uint8 [M, H, W, C], y [M]:
                           the marked training images and their originals (black-box test)
    PRIVATE-README.txt     what this is and why it must stay private

The poison directory records only ``key_sha256`` (:func:`key_hash`, a hash of the
secret and the carriers: it identifies the key without revealing it). The key
directory is created with mode 0700, written under a hidden name and renamed into
place (never half-written), may not lie inside or contain the poison directory,
and ``ntga.export`` refuses to write into it or to export a folder containing one
(:func:`find_key_dir`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ntga import atomic
from ntga.errors import UserInputError

KEY_JSON = "radioactive_key.json"
CARRIERS = "carriers.npy"
MARKING_NET = "marking_net"
MARKED = "marked.npz"
README = "PRIVATE-README.txt"
FORMAT = "ntga-radioactive-key"
VERSION = 1
_HASH_TAG = b"ntga-radioactive-key-v1\0"


def new_secret() -> bytes:
    """A fresh 256-bit secret from the operating system's random source."""
    return secrets.token_bytes(32)


def draw_carriers(secret: bytes, num_classes: int, dim: int) -> np.ndarray:
    """float64 [K, d] unit carriers: Gaussian directions drawn from ``secret`` (numpy PCG64, seeded by all 256 bits)."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(b"carriers\0" + secret).digest(), "big"))
    u = rng.standard_normal((int(num_classes), int(dim)))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def key_hash(secret: bytes, carriers: np.ndarray) -> str:
    """sha256 identifying a key (the only thing about it that the poison directory records)."""
    return hashlib.sha256(_HASH_TAG + secret + np.ascontiguousarray(carriers, np.float64).tobytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class MarkKey:
    """A key in memory.

    Attributes:
      secret: 32 bytes.
      carriers: float64 [K, d] unit rows.
      info: the JSON description (budget, dataset, marking network, ...).
      marking_net: a function ``save(dir)`` writing the marking network (generation), or the
        loaded :class:`ntga.models.saved.SavedModel` (detection).
      source_indices: int64 [M] dataset rows of the marked images.
      x_marked, x_original: uint8 [M, H, W, C].
      y: int64 [M].
    """

    secret: bytes
    carriers: np.ndarray
    info: dict[str, Any]
    marking_net: Any
    source_indices: np.ndarray
    x_marked: np.ndarray
    x_original: np.ndarray
    y: np.ndarray

    @property
    def hash(self) -> str:
        return key_hash(self.secret, self.carriers)

    @property
    def num_classes(self) -> int:
        return int(self.carriers.shape[0])

    @property
    def dim(self) -> int:
        return int(self.carriers.shape[1])


def find_key_dir(path: str | Path) -> Path | None:
    """The key directory at or above ``path`` (a path inside a key must never be published), or None."""
    path = Path(path).resolve()
    for p in (path, *path.parents):
        if (p / KEY_JSON).is_file():
            return p
    return None


def keys_inside(path: str | Path) -> list[Path]:
    """Key directories at or below ``path``."""
    path = Path(path)
    return sorted(p.parent for p in path.rglob(KEY_JSON)) if path.is_dir() else []


def _inside(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def check_key_out(key_out: str | Path, poison_out: str | Path) -> Path:
    """Refuses a key directory that would be published with the poisons, or one that is already used.

    Raises:
      UserInputError: ``key_out`` is the poison directory, inside it, or contains it; or it exists and
        is not empty (a key is never overwritten).
    """
    key_out, poison_out = Path(key_out), Path(poison_out)
    if _inside(key_out, poison_out):
        raise UserInputError(f"--key-out {key_out} is inside the poison directory --out {poison_out}, which is "
                             "meant to be published; put the private key elsewhere, e.g. --key-out "
                             f"{poison_out.resolve().parent / (poison_out.resolve().name + '-KEY')}")
    if _inside(poison_out, key_out):
        raise UserInputError(f"--out {poison_out} is inside the private key directory --key-out {key_out}; "
                             "the poisons are public, the key is not: use two separate folders")
    _check_new(key_out)
    return key_out


def _check_new(key_out: Path) -> None:
    if key_out.exists() and (not key_out.is_dir() or any(key_out.iterdir())):
        raise UserInputError(f"--key-out {key_out} exists and is not an empty directory; a key is never "
                             "overwritten (it is the only proof of the marking): choose a new folder")


def write_key(key: MarkKey, key_out: str | Path) -> Path:
    """Writes ``key`` to the new directory ``key_out`` (mode 0700), atomically; returns its path."""
    key_out = Path(key_out)
    _check_new(key_out)
    key_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = key_out.parent / f".{key_out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o700)
    try:
        np.save(tmp / CARRIERS, np.ascontiguousarray(key.carriers, np.float64), allow_pickle=False)
        key.marking_net(tmp / MARKING_NET)
        np.savez(tmp / MARKED, source_indices=np.asarray(key.source_indices, np.int64),
                 x_marked=key.x_marked, x_original=key.x_original, y=np.asarray(key.y, np.int64))
        files = {name: hashlib.sha256((tmp / name).read_bytes()).hexdigest() for name in (CARRIERS, MARKED)}
        atomic.write_text(tmp / README, _readme(key))
        atomic.write_json(tmp / KEY_JSON, {
            "format": FORMAT, "version": VERSION, "key_sha256": key.hash, "secret_hex": key.secret.hex(),
            "num_classes": key.num_classes, "feature_dim": key.dim, "files_sha256": files, **key.info})
        if key_out.exists():
            key_out.rmdir()  # empty (checked above)
        os.replace(tmp, key_out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(key_out, 0o700)
    return key_out


def _readme(key: MarkKey) -> str:
    return (
        "PRIVATE: the secret key of a radioactive marking (ntga.generate --method radioactive).\n\n"
        f"key sha256: {key.hash}\n"
        f"poison directory: {key.info.get('poison_dir')}\n\n"
        "This folder is the only proof that a model was trained on the marked data:\n"
        "  python -m ntga.detect --key THIS_FOLDER --model SAVED_MODEL_DIR\n"
        "Keep a backup in a safe place. Never publish it, never put it beside the published\n"
        "images: anyone holding it can test, and also erase or forge, the mark.\n")


def read_key(path: str | Path) -> MarkKey:
    """Reads and verifies a key directory (hash, file checksums, carriers, marking network).

    Raises:
      UserInputError: not a key directory, or a damaged one.
    """
    from ntga.models.saved import load_model

    path = Path(path)
    if not (path / KEY_JSON).is_file():
        raise UserInputError(f"--key {path} is not a radioactive key directory (no {KEY_JSON}); it is the "
                             "folder given to `ntga.generate --method radioactive --key-out`")
    try:
        info = json.loads((path / KEY_JSON).read_text())
        if info.get("format") != FORMAT:
            raise ValueError(f"format is {info.get('format')!r}")
        for name, digest in info["files_sha256"].items():
            if hashlib.sha256((path / name).read_bytes()).hexdigest() != digest:
                raise ValueError(f"{name} does not match its sha256 (damaged or edited)")
        secret = bytes.fromhex(info["secret_hex"])
        carriers = np.load(path / CARRIERS, allow_pickle=False)
        with np.load(path / MARKED, allow_pickle=False) as z:
            marked = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserInputError(f"cannot read the key {path}: {err}") from None
    if key_hash(secret, carriers) != info["key_sha256"]:
        raise UserInputError(f"key {path}: carriers and secret do not match key_sha256 (damaged or edited)")
    extra = {k: v for k, v in info.items() if k not in ("secret_hex", "files_sha256")}
    return MarkKey(secret=secret, carriers=carriers, info=extra, marking_net=load_model(path / MARKING_NET),
                   source_indices=marked["source_indices"], x_marked=marked["x_marked"],
                   x_original=marked["x_original"], y=marked["y"])


def public_reference(key: MarkKey) -> Mapping[str, Any]:
    """What the poison manifest may say about the key: its hash only."""
    return {"key_sha256": key.hash}


__all__ = ["MarkKey", "check_key_out", "draw_carriers", "find_key_dir", "key_hash", "keys_inside", "new_secret",
           "public_reference", "read_key", "write_key"]
