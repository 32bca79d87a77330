"""Block-wise generation: the helper every block-wise method (NTGA, BEO) calls.

A block-wise method splits the images to protect into contiguous blocks that are
protected independently by one pure, jittable ``block_fn``. :class:`BlockRunner`
does everything a long run needs around it, the same way for every such method:
per-block checkpoints in the run's work directory (resume, damaged files
recomputed), this process's ``--shard``, spreading groups of blocks over the
local devices, progress lines, and assembling the finished blocks. The driver
(:mod:`ntga.run.driver`) hands a method its runner in ``ProtectTask.blocks``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from ntga import outdir
from ntga.errors import UserInputError
from ntga.poisondir import MANIFEST
from ntga.run.plan import BlockPlan
from ntga.run.spread import BlockFn, BlockSpreader
from ntga.run.workdir import WorkDir


@dataclass(frozen=True)
class BlockJob:
    """What one block-wise run protects.

    Attributes:
        x: [N, H, W, C] images to protect, in block order (in whatever dtype ``block_fn`` takes).
        y: [N, ...] their labels (NTGA: one-hot rows; BEO: integers).
        block_size: examples per block (the last block holds the remainder).
        shared: inputs every block sees, passed after the per-block ones (NTGA: the
            target images and their one-hot labels).
        extra: ``extra(index, start, stop) -> tuple of arrays``: further per-block inputs
            made on the host, passed after the block's images and labels (BEO: its valid-row
            mask and clean reference sample); None for none.
        pad: feed every block with ``block_size`` rows, the last one padded with zeros, so
            one compiled program serves all blocks; the output is cut back to the real rows
            (``extra`` tells ``block_fn`` which rows are real).
    """

    x: np.ndarray
    y: np.ndarray
    block_size: int
    shared: tuple[Any, ...] = ()
    extra: Callable[[int, int, int], tuple[np.ndarray, ...]] | None = None
    pad: bool = False


@dataclass
class RunSummary:
    """Per-block statistics of a run (for the manifest and the CLI)."""

    block_stats: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False
    all_present: bool = False  # every block's work files exist (from this or another process)

    def mean(self, key: str) -> float | None:
        values = [s[key] for s in self.block_stats if key in s]
        return float(np.mean(values)) if values else None


def _stats_of(out: dict[str, np.ndarray], g: int, rows: int, seconds: float) -> dict[str, Any]:
    stats: dict[str, Any] = {"seconds": seconds, "images": rows}
    for name, value in out.items():
        if name == "x_poison_uint8":
            continue
        value = np.asarray(value[g])
        stats[name] = value.item() if value.ndim == 0 else value.tolist()
    return stats


class _Blocks:
    """One run's blocks: what to compute, computing them, and assembling the finished ones."""

    def __init__(self, job: BlockJob, block_fn: BlockFn, key: jax.Array, work: WorkDir | None,
                 devices: Sequence[jax.Device] | None):
        self.job, self.key, self.work = job, key, work
        self.plan = BlockPlan(len(job.x), job.block_size)
        self.spreader = BlockSpreader(block_fn, devices)
        self.memory: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}  # finished blocks when there is no work dir

    def shape(self, i: int) -> tuple[int, ...]:
        a, b = self.plan.bounds(i)
        return (b - a, *self.job.x.shape[1:])

    def load(self, i: int) -> tuple[np.ndarray, dict[str, Any]] | None:
        """Block ``i`` when finished and intact (a damaged one is deleted, with a warning)."""
        if self.work is None:
            return self.memory.get(i)
        return self.work.load_block(i, self.shape(i))

    def present(self) -> set[int]:
        if self.work is None:
            return set(self.memory)
        return set(self.work.finished(self.plan.num_blocks))

    def _inputs(self, i: int) -> tuple[np.ndarray, ...]:
        job = self.job
        a, b = self.plan.bounds(i)
        x, y = job.x[a:b], job.y[a:b]
        if job.pad and b - a < job.block_size:
            pad = job.block_size - (b - a)
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros((pad, *y.shape[1:]), y.dtype)])
        return (x, y, *(job.extra(i, a, b) if job.extra is not None else ()))

    def compute(self, indices: list[int], bar, describe: Callable[[int, dict[str, Any]], str] | None) -> None:
        shared = tuple(jax.numpy.asarray(a) for a in self.job.shared)
        sizes = [self.job.block_size] * self.plan.num_blocks if self.job.pad else self.plan.sizes()
        groups: list[list[int]] = []  # blocks of equal size run together, one per device
        for size in sorted({sizes[i] for i in indices}, reverse=True):
            same = [i for i in indices if sizes[i] == size]
            n_dev = self.spreader.num_devices
            groups += [same[j:j + n_dev] for j in range(0, len(same), n_dev)]
        for group in groups:
            start = time.perf_counter()
            inputs = [self._inputs(i) for i in group]
            per_block = [np.stack(parts) for parts in zip(*inputs)]
            keys = jax.vmap(lambda i: jax.random.fold_in(self.key, i))(np.asarray(group, dtype=np.uint32))
            result = self.spreader.run(per_block, shared, keys)
            seconds = (time.perf_counter() - start) / len(group)
            for g, index in enumerate(group):
                rows = self.shape(index)[0]
                x_uint8 = np.asarray(result["x_poison_uint8"][g])[:rows]
                stats = _stats_of(result, g, rows, seconds)
                _check_finite(index, stats)
                if self.work is None:
                    self.memory[index] = (x_uint8, stats)
                else:
                    self.work.save_block(index, x_uint8, stats)
                if describe is not None:
                    bar.write(describe(index, stats))
                bar.update(1)

    def assemble(self) -> tuple[np.ndarray, RunSummary]:
        """Every block, verified; one damaged since it was written (e.g. another shard's) is redone here."""
        summary = RunSummary(all_present=True)
        parts = []
        for i in range(self.plan.num_blocks):
            loaded = self.load(i)
            if loaded is None:
                self.compute([i], tqdm(disable=True), None)
                loaded = self.load(i)
                if loaded is None:
                    raise RuntimeError(f"block {i} in {self.work.work} fails its checksum right after being written")
            parts.append(loaded[0])
            summary.block_stats.append(loaded[1])
        summary.complete = True
        return np.concatenate(parts), summary


class BlockRunner:
    """Runs the blocks of one block-wise method for one process of a generation run.

    Args:
        work: the run's (opened) work directory, where finished blocks are kept; None
            keeps them in memory (a direct call from Python or a test: no resume, no shards).
        resume: whether finished blocks in ``work`` may be used.
        shard: ``(k, n)``: this process computes blocks ``i`` with ``i % n == k``.
        devices: local devices to spread blocks over (default: all).
        progress: show a progress bar over blocks with ETA.
    """

    def __init__(self, work: WorkDir | None = None, *, resume: bool = False, shard: tuple[int, int] = (0, 1),
                 devices: Sequence[jax.Device] | None = None, progress: bool = False):
        if work is None and shard != (0, 1):
            raise ValueError("a sharded run needs a work directory shared by its processes")
        self.work, self.resume, self.shard, self.devices, self.progress = work, resume, shard, devices, progress

    def run(self, job: BlockJob, block_fn: BlockFn, key: jax.Array, *,
            describe: Callable[[int, dict[str, Any]], str] | None = None) -> tuple[np.ndarray | None, RunSummary]:
        """Protects ``job.x`` block by block.

        Args:
            job: the data to protect and the inputs its blocks share.
            block_fn: pure per-block function (see :data:`ntga.run.spread.BlockFn`); it must
                return ``x_poison_uint8`` (uint8 [B, H, W, C]) and scalar/array statistics.
            key: base PRNG key; block ``i`` gets ``fold_in(key, i)``.
            describe: formats a per-block line for the progress output.

        Returns:
            ``(x_uint8, summary)``: the protected images [N, H, W, C] when every block is
            finished (by this or another process) and this process assembles them; else
            ``(None, summary)``: other shards' blocks are missing (``summary.all_present`` is
            False), or another process of the run has already written the output.
        """
        blocks = _Blocks(job, block_fn, key, self.work, self.devices)
        k_shard, n_shard = self.shard
        mine = [i for i in range(blocks.plan.num_blocks) if i % n_shard == k_shard]
        # A block counts as finished only if its work files pass their checksums; a damaged
        # one is deleted (with a warning) by load and recomputed here.
        present = blocks.present()
        todo = [i for i in mine if i not in present or blocks.load(i) is None]
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="blocks", unit="block",
                   disable=not self.progress, dynamic_ncols=True)
        try:
            blocks.compute(todo, bar, describe)
        finally:
            bar.close()
        if len(blocks.present()) < blocks.plan.num_blocks:
            return None, RunSummary()
        if self.work is None:
            return blocks.assemble()
        # Shards share the folder: assembly is serialised, and a process that finds the
        # output already written leaves it alone (the driver then reports it complete).
        with outdir.assembly_lock(self.work.out):
            if (self.work.out / MANIFEST).exists():
                return None, RunSummary(all_present=True)
            return blocks.assemble()


def _check_finite(index: int, stats: dict[str, Any]) -> None:
    """Stops the run at the first block whose statistics are not finite (nothing such is saved)."""
    bad = sorted(name for name, value in stats.items()
                 if isinstance(value, (int, float, list)) and not np.isfinite(np.asarray(value, float)).all())
    if bad:
        raise UserInputError(f"block {index}: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not finite; the "
                             "settings give the attack no usable numbers (try a smaller --t or --dtype float64)")
