"""A run's work directory ``OUT/.work``, so a killed generation run loses no finished work.

It holds ``run.json``, the fingerprint of every setting that affects the output
(:mod:`ntga.run.fingerprint`), one checksummed file pair per finished block
(written atomically: temp file + ``os.replace``, with a sha256 sidecar:
:mod:`ntga.workfiles`), and a private folder per method for its own progress
files. Restarting with ``--resume`` re-reads the fingerprint, refuses a
directory made with different settings, skips finished blocks whose checksums
verify and recomputes damaged ones. Because a block's result depends only on
its own data, the shared inputs, the settings and ``fold_in(key, block_index)``,
an interrupted-and-resumed run produces output identical to an uninterrupted one.

Several processes (for example one per host of a cluster) may share one output
directory: each takes the blocks of its ``--shard K/N``, and whichever finds all
blocks present assembles the poison directory.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ntga import atomic, outdir, workfiles
from ntga.errors import UserInputError
from ntga.poisondir import MANIFEST
from ntga.run.fingerprint import LATER_FIELDS, differences

WORK_DIR = ".work"
RUN_FILE = "run.json"


class WorkDir:
    """The ``OUT/.work`` directory of one run (see the module docstring)."""

    def __init__(self, out: Path, block_stem: str = "block"):
        self.out = Path(out)
        self.work = self.out / WORK_DIR
        self.block_stem = block_stem

    def for_pass(self, name: str) -> "WorkDir":
        """The same work directory with its own block files ``NAME_block_*`` (a run's second pass)."""
        return WorkDir(self.out, f"{name}_block")

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
            details = differences(saved, fingerprint, set(saved) | set(fingerprint) | set(LATER_FIELDS))
            if details:
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
        stem = self.work / f"{self.block_stem}_{index:05d}"
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

    def private(self, name: str) -> Path:
        """A folder ``.work/NAME`` for one method's own progress files (created if needed)."""
        path = self.work / name
        path.mkdir(exist_ok=True)
        return path

    def remove(self) -> None:
        """Deletes the work directory once the poison directory is complete."""
        shutil.rmtree(self.work, ignore_errors=True)
