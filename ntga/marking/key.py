"""The private key of a radioactive marking: what proves use of the data later, and must never be published.

A key directory (``ntga.generate --method radioactive --key-out DIR``) holds::

    radioactive_key.json   the marker and description: key hash, the 256-bit secret the carriers
                           come from, K, feature size d, image shape, class names, budget, dataset
                           spec and content hash, the poison directory it belongs to and the sha256
                           of its run's fingerprint (``--resume``), the marking network's facts
                           (model, feature size, accuracy), the sha256 of every other file
    carriers.npy           float64 [K, d] unit carriers u_k (one per class)
    marking_net/           the marking network phi_0 (``ntga.models.saved``: model.json + params.npz)
    marked.npz             source_indices [M] (dataset rows), positions [M] (rows of the poison
                           directory), x_marked / x_original uint8 [M, H, W, C], y [M], psnr_db [M]:
                           the marked training images and their originals (black-box test)
    PRIVATE-README.txt     what this is and why it must stay private

Which rows carry the mark is secret: the poison directory of a radioactive run has
no ``protected_positions.npy`` and its manifest no per-image values; experiments
that need the truth read it from the key (:func:`marked_positions`,
:func:`truth_labels`). The poison directory records only ``key_sha256``
(:func:`key_hash`, a hash of the secret and the carriers: it identifies the key
without revealing it). The key directory is created with mode 0700, written under
a hidden name and renamed into place (never half-written), may not lie inside or
contain the poison directory, and ``ntga.export`` refuses to write into it or to
export a folder containing one (:func:`find_key_dir`).
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
VERSION = 2  # 2: marking_net/ covered by files_sha256; positions and psnr_db in marked.npz
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
      positions: int64 [M] rows of the poison directory that carry the mark (set by the
        generation driver; None before it is known).
      psnr_db: float64 [M] PSNR of each marked image against its original (inf: unchanged).
    """

    secret: bytes
    carriers: np.ndarray
    info: dict[str, Any]
    marking_net: Any
    source_indices: np.ndarray
    x_marked: np.ndarray
    x_original: np.ndarray
    y: np.ndarray
    positions: np.ndarray | None = None
    psnr_db: np.ndarray | None = None

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


def check_key_out(key_out: str | Path, poison_out: str | Path, resume: bool = False) -> Path:
    """Refuses a key directory that would be published with the poisons, or one that is already used.

    Args:
      key_out, poison_out: ``--key-out`` and ``--out``.
      resume: a ``--resume`` run may find its own key there (the driver then checks that the key
        belongs to the run); any other non-empty folder is still refused.

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
    if not (resume and (key_out / KEY_JSON).is_file()):
        _check_new(key_out)
    return key_out


def _check_new(key_out: Path) -> None:
    if key_out.exists() and (not key_out.is_dir() or any(key_out.iterdir())):
        hint = (" (if it holds the key of an interrupted run with these settings, add --resume)"
                if (key_out / KEY_JSON).is_file() else "")
        raise UserInputError(f"--key-out {key_out} exists and is not an empty directory; a key is never "
                             f"overwritten (it is the only proof of the marking): choose a new folder{hint}")


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
        extra = {} if key.positions is None else {"positions": np.asarray(key.positions, np.int64)}
        if key.psnr_db is not None:
            extra["psnr_db"] = np.asarray(key.psnr_db, np.float64)
        np.savez(tmp / MARKED, source_indices=np.asarray(key.source_indices, np.int64),
                 x_marked=key.x_marked, x_original=key.x_original, y=np.asarray(key.y, np.int64), **extra)
        files = _checksums(tmp)
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


def _covered(root: Path) -> list[str]:
    """The files a key's ``files_sha256`` must cover: carriers, marked images, every marking-network file."""
    net = root / MARKING_NET
    return [CARRIERS, MARKED, *sorted(p.relative_to(root).as_posix() for p in net.rglob("*") if p.is_file())]


def _checksums(root: Path) -> dict[str, str]:
    return {name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in _covered(root)}


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
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise ValueError(f"format is {info.get('format') if isinstance(info, dict) else None!r}, "
                             f"expected {FORMAT!r}")
        if info.get("version") != VERSION:
            raise ValueError(f"version {info.get('version')!r} is not supported (this version reads {VERSION})")
        listed = info["files_sha256"]
        missing = sorted(set(_covered(path)) - set(listed))
        if missing:
            raise ValueError(f"files_sha256 does not cover {', '.join(missing)}")
        for name, digest in listed.items():
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise ValueError(f"files_sha256 names {name!r}, outside the key")
            if hashlib.sha256((path / name).read_bytes()).hexdigest() != digest:
                raise ValueError(f"{name} does not match its sha256 (damaged or edited)")
        secret = bytes.fromhex(info["secret_hex"])
        carriers = np.load(path / CARRIERS, allow_pickle=False)
        with np.load(path / MARKED, allow_pickle=False) as z:
            marked = {k: z[k] for k in z.files}
        for name in ("source_indices", "x_marked", "x_original", "y"):
            if name not in marked:
                raise ValueError(f"{MARKED} has no array {name!r}")
        stored_hash = info["key_sha256"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserInputError(f"cannot read the key {path}: {err}") from None
    if key_hash(secret, carriers) != stored_hash:
        raise UserInputError(f"key {path}: carriers and secret do not match key_sha256 (damaged or edited)")
    extra = {k: v for k, v in info.items() if k not in ("secret_hex", "files_sha256")}
    return MarkKey(secret=secret, carriers=carriers, info=extra, marking_net=load_model(path / MARKING_NET),
                   source_indices=marked["source_indices"], x_marked=marked["x_marked"],
                   x_original=marked["x_original"], y=marked["y"], positions=marked.get("positions"),
                   psnr_db=marked.get("psnr_db"))


def marked_positions(key: MarkKey | str | Path) -> np.ndarray:
    """int64 [M] rows of the key's poison directory that carry the mark (the truth, kept out of the poisons).

    Args:
      key: a :class:`MarkKey` or a key directory.

    Raises:
      UserInputError: the key records no positions (written outside the generation driver).
    """
    key = read_key(key) if not isinstance(key, MarkKey) else key
    if key.positions is None:
        raise UserInputError("this key records no poison-directory positions (it was not written by "
                             "`ntga.generate --method radioactive`)")
    return np.asarray(key.positions, np.int64)


def truth_labels(key: MarkKey | str | Path, num_rows: int | None = None) -> np.ndarray:
    """bool [N]: which rows of the key's poison directory are marked (N: ``num_rows``, default the key's record).

    For experiments that score detectors of marked rows (AUROC against the truth), since the
    published poison directory does not say which rows they are.
    """
    key = read_key(key) if not isinstance(key, MarkKey) else key
    rows = marked_positions(key)
    n = int(key.info.get("num_training_images", 0) if num_rows is None else num_rows)
    if rows.size and (rows.max() >= n or rows.min() < 0):
        raise UserInputError(f"the key marks poison-directory row {int(rows.max())} but there are {n} rows")
    labels = np.zeros(n, bool)
    labels[rows] = True
    return labels


def public_reference(key: MarkKey) -> Mapping[str, Any]:
    """What the poison manifest may say about the key: its hash only."""
    return {"key_sha256": key.hash}


__all__ = ["MarkKey", "check_key_out", "draw_carriers", "find_key_dir", "key_hash", "keys_inside", "marked_positions",
           "new_secret", "public_reference", "read_key", "truth_labels", "write_key"]
