"""Block plan and per-block checkpoints, so a killed generation run loses no finished work.

A generation run poisons the training set block by block. Each finished block is
written at once (atomically: temp file + ``os.replace``, with a sha256 sidecar:
:mod:`ntga.workfiles`) under ``OUT/.work/``, beside ``run.json``, the fingerprint
of every setting that affects the output. Restarting with ``--resume`` re-reads
the fingerprint, refuses a directory made with different settings, skips
finished blocks whose checksums verify, recomputes damaged ones and continues. Because a block's
result depends only on its own data, the shared target set, the settings and
``fold_in(key, block_index)``, an interrupted-and-resumed run produces output
identical to an uninterrupted one.

Several processes (for example one per host of a cluster) may share one output
directory: each takes the blocks of its ``--shard K/N``, and whichever finds all
blocks present assembles the poison directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ntga import atomic, outdir, workfiles
from ntga.errors import UserInputError
from ntga.poisondir import MANIFEST, read_poison_dir

WORK_DIR = ".work"
RUN_FILE = "run.json"


@dataclass(frozen=True)
class BlockPlan:
    """Contiguous blocks over ``num_examples`` training examples; none dropped.

    All blocks have ``block_size`` examples except possibly the last, which holds
    the remainder (the reference silently dropped it).
    """

    num_examples: int
    block_size: int

    def __post_init__(self):
        if self.block_size < 1:
            raise UserInputError(f"--block-size must be a positive integer, got {self.block_size}")
        if self.block_size > self.num_examples:
            raise UserInputError(
                f"--block-size {self.block_size} is larger than the training set to poison "
                f"({self.num_examples} examples); use at most {self.num_examples}"
            )

    @property
    def num_blocks(self) -> int:
        return -(-self.num_examples // self.block_size)

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.block_size
        return start, min(start + self.block_size, self.num_examples)

    def sizes(self) -> list[int]:
        return [b - a for a, b in map(self.bounds, range(self.num_blocks))]


def parse_shard(text: str | None) -> tuple[int, int]:
    """Parses ``K/N`` (1-based K) into ``(K-1, N)``; None means the whole run ``(0, 1)``."""
    if text is None:
        return 0, 1
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise UserInputError(f"--shard must look like K/N with integers, e.g. 1/4; got {text!r}") from None
    if not 1 <= k <= n:
        raise UserInputError(f"--shard {text!r}: need 1 <= K <= N")
    return k - 1, n


class BlockStore:
    """The ``OUT/.work`` directory of one run: fingerprint plus one file pair per finished block."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.work = self.out / WORK_DIR

    # -- run fingerprint --------------------------------------------------------------
    def check(self, fingerprint: dict[str, Any], *, resume: bool) -> None:
        """Applies the output-directory policy and the settings check without writing anything.

        ``out`` must be new or empty, or hold a generation run (``.work/run.json`` or a
        finished manifest) and ``resume`` be given; a resumed run's fingerprint must
        equal ``fingerprint``.

        Raises:
            UserInputError: ``out`` is non-empty and ``resume`` is false; or it was made
                with different settings; or it is not a generation directory at all.
        """
        run_file = self.work / RUN_FILE
        outdir.check_reusable(self.out, owned=lambda out: run_file.exists() or (out / MANIFEST).exists(),
                              resume=resume, what="an ntga.generate run")
        if resume and run_file.exists():
            saved = json.loads(run_file.read_text())
            diff = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
            if diff:
                details = "; ".join(f"{k}: was {saved.get(k)!r}, now {fingerprint.get(k)!r}" for k in diff)
                raise UserInputError(f"cannot resume into {self.out}: it was made with different settings ({details})")

    def open(self, fingerprint: dict[str, Any], *, resume: bool) -> None:
        """:meth:`check`, then creates the work directory and its fingerprint (unless resuming one)."""
        self.check(fingerprint, resume=resume)
        run_file = self.work / RUN_FILE
        if resume and run_file.exists():
            return
        outdir.ensure_dir(self.out)
        self.work.mkdir(parents=True, exist_ok=True)
        atomic.write_bytes(run_file, json.dumps(fingerprint, indent=2, sort_keys=True).encode())

    # -- blocks -----------------------------------------------------------------------
    def _paths(self, index: int) -> tuple[Path, Path]:
        stem = self.work / f"block_{index:05d}"
        return stem.with_suffix(".npy"), stem.with_suffix(".json")

    def save_block(self, index: int, x_uint8: np.ndarray, stats: dict[str, Any]) -> None:
        """Writes one finished block as checksummed work files; the JSON goes last and marks it complete."""
        npy, meta = self._paths(index)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(x_uint8, dtype=np.uint8), allow_pickle=False)
        workfiles.write(npy, buf.getvalue())
        workfiles.save_json(meta, {"index": index, "shape": list(x_uint8.shape), **stats})

    def load_block(self, index: int, expected_shape: tuple[int, ...]) -> tuple[np.ndarray, dict[str, Any]] | None:
        """A finished block that passes its checksums, or None (absent or damaged: recompute it).

        A damaged block is deleted with a warning, so the next pass recomputes it.
        """
        npy, meta = self._paths(index)
        stats = workfiles.load_json(meta)
        data = workfiles.read(npy) if stats is not None else None
        if data is None:
            return None
        try:
            x = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as err:
            x = None
            why = f"is not a readable array ({err})"
        else:
            why = f"holds {x.dtype}{list(x.shape)}, expected uint8{list(expected_shape)}"
        if x is None or x.dtype != np.uint8 or x.shape != tuple(expected_shape):
            workfiles.discard(npy, why)
            workfiles.remove(meta)
            return None
        return x, stats

    def finished(self, num_blocks: int) -> list[int]:
        """Indices of blocks whose files are present (their checksums are verified by :meth:`load_block`)."""
        return [i for i in range(num_blocks) if all(p.exists() for p in self._paths(i))]

    def remove(self) -> None:
        """Deletes the work directory once the poison directory is complete."""
        shutil.rmtree(self.work, ignore_errors=True)


def data_fingerprint(split) -> dict[str, Any]:
    """The part of a run's fingerprint that names its data: dataset, content hash, split indices.

    Every generation method puts this beside its own settings, so resuming on
    other data (or another split of it) is refused the same way everywhere.
    """
    import ntga

    def digest(a: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()

    ds = split.dataset
    return {"dataset": ds.spec, "dataset_content_hash": ds.content_hash,
            "train_indices_sha256": digest(split.train_idx), "target_indices_sha256": digest(split.target_idx),
            "ntga_version": ntga.__version__}


def finished_with_same_settings(out: Path, fingerprint: dict[str, Any]) -> bool:
    """Whether ``out`` is a complete poison directory made with ``fingerprint``'s settings.

    Raises:
      UserInputError: it is complete but was made with other settings (so ``--resume``
        never silently returns another run's output).
    """
    if not (Path(out) / MANIFEST).exists():
        return False
    saved = read_poison_dir(out, verify=True).manifest
    diff = sorted(k for k in fingerprint if k in saved and saved[k] != fingerprint[k])
    if diff:
        details = "; ".join(f"{k}: was {saved[k]!r}, now {fingerprint[k]!r}" for k in diff)
        raise UserInputError(f"cannot resume into {out}: it is complete but was made with different settings "
                             f"({details})")
    return True
