"""Block-wise generation runs: plan, per-block checkpoints, device spreading, assembly.

:func:`run_blocks` is method-agnostic: it takes a pure, jittable ``block_fn`` that
protects one block against the shared target set, and handles everything a long
run needs around it (resume, several devices, several hosts, progress, the final
poison directory). ``ntga.generate`` builds ``block_fn`` from the NTGA attack.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from ntga.checkpoint import BlockPlan, BlockStore
from ntga.errors import UserInputError
from ntga.poisondir import write_poison_dir
from ntga.spread import BlockFn, BlockSpreader


@dataclass(frozen=True)
class BlockJob:
    """What one block-wise run protects, and against which target set.

    Attributes:
        x: [N, H, W, C] float images in [0, 1] to protect, in block order.
        y_onehot: [N, k] one-hot labels of ``x``.
        x_target: [M, H, W, C] float target images (held out, disjoint from ``x``).
        y_target_onehot: [M, k] one-hot labels of the target set.
        block_size: examples per block (the last block holds the remainder).
    """

    x: np.ndarray
    y_onehot: np.ndarray
    x_target: np.ndarray
    y_target_onehot: np.ndarray
    block_size: int


@dataclass
class RunSummary:
    """Per-block statistics gathered by :func:`run_blocks` (for the manifest and the CLI)."""

    block_stats: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False
    all_present: bool = False  # every block's work files exist (from this or another process)
    path: Path | None = None

    def mean(self, key: str) -> float | None:
        values = [s[key] for s in self.block_stats if key in s]
        return float(np.mean(values)) if values else None


def _stats_of(out: dict[str, np.ndarray], g: int, seconds: float) -> dict[str, Any]:
    stats: dict[str, Any] = {"seconds": seconds, "images": int(np.asarray(out["x_poison_uint8"][g]).shape[0])}
    for name, value in out.items():
        if name == "x_poison_uint8":
            continue
        value = np.asarray(value[g])
        stats[name] = value.item() if value.ndim == 0 else value.tolist()
    return stats


class _Blocks:
    """One run's blocks: what to compute, computing them, and assembling the finished ones."""

    def __init__(self, job: BlockJob, block_fn: BlockFn, key: jax.Array, out: str | Path,
                 devices: Sequence[jax.Device] | None):
        self.job, self.key = job, key
        self.plan = BlockPlan(len(job.x), job.block_size)
        self.store = BlockStore(Path(out))
        self.spreader = BlockSpreader(block_fn, devices)

    def shape(self, i: int) -> tuple[int, ...]:
        a, b = self.plan.bounds(i)
        return (b - a, *self.job.x.shape[1:])

    def verified(self, i: int) -> bool:
        """Whether block ``i`` is finished and passes its checksums (a damaged one is deleted, with a warning)."""
        return self.store.load_block(i, self.shape(i)) is not None

    def all_present(self) -> bool:
        return len(self.store.finished(self.plan.num_blocks)) == self.plan.num_blocks

    def compute(self, indices: list[int], bar, describe: Callable[[int, dict[str, Any]], str] | None) -> None:
        plan, job, store = self.plan, self.job, self.store
        x_target = jax.numpy.asarray(job.x_target)
        y_target = jax.numpy.asarray(job.y_target_onehot)
        sizes = plan.sizes()
        groups: list[list[int]] = []  # blocks of equal size run together, one per device
        for size in sorted({sizes[i] for i in indices}, reverse=True):
            same = [i for i in indices if sizes[i] == size]
            n_dev = self.spreader.num_devices
            groups += [same[j:j + n_dev] for j in range(0, len(same), n_dev)]
        for group in groups:
            start = time.perf_counter()
            xs = np.stack([job.x[slice(*plan.bounds(i))] for i in group])
            ys = np.stack([job.y_onehot[slice(*plan.bounds(i))] for i in group])
            keys = jax.vmap(lambda i: jax.random.fold_in(self.key, i))(np.asarray(group, dtype=np.uint32))
            result = self.spreader.run(xs, ys, x_target, y_target, keys)
            seconds = (time.perf_counter() - start) / len(group)
            for g, index in enumerate(group):
                stats = _stats_of(result, g, seconds)
                _check_finite(index, stats)
                store.save_block(index, result["x_poison_uint8"][g], stats)
                if describe is not None:
                    bar.write(describe(index, stats))
                bar.update(1)

    def assemble(self) -> tuple[np.ndarray, RunSummary]:
        """Every block, verified; one damaged since it was written (e.g. another shard's) is redone here."""
        summary = RunSummary(all_present=True)
        parts = []
        for i in range(self.plan.num_blocks):
            loaded = self.store.load_block(i, self.shape(i))
            if loaded is None:
                self.compute([i], tqdm(disable=True), None)
                loaded = self.store.load_block(i, self.shape(i))
                if loaded is None:
                    raise RuntimeError(f"block {i} in {self.store.work} fails its checksum right after being written")
            parts.append(loaded[0])
            summary.block_stats.append(loaded[1])
        summary.complete = True
        return np.concatenate(parts), summary


def run_blocks(
    job: BlockJob,
    block_fn: BlockFn,
    key: jax.Array,
    out: str | Path,
    *,
    fingerprint: dict[str, Any],
    resume: bool = False,
    shard: tuple[int, int] = (0, 1),
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
    describe: Callable[[int, dict[str, Any]], str] | None = None,
    assemble: bool = True,
) -> tuple[np.ndarray | None, RunSummary]:
    """Protects ``job.x`` block by block, saving each finished block under ``out/.work``.

    Args:
        job: the data to protect and the target set.
        block_fn: pure per-block function (see :data:`ntga.spread.BlockFn`); must return
            ``x_poison_uint8`` (uint8 [B, H, W, C]) and scalar/array statistics (e.g.
            :func:`ntga.attack.make_block_attack`).
        key: base PRNG key; block ``i`` uses ``fold_in(key, i)``.
        out: output directory.
        fingerprint: every setting that affects the output; resuming with a different
            fingerprint is refused.
        resume: continue a run in a non-empty ``out``.
        shard: ``(k, n)``: this process handles blocks ``i`` with ``i % n == k``.
        devices: local devices to spread blocks over (default: all).
        progress: show a progress bar over blocks with ETA.
        describe: formats a per-block line for the progress output.
        assemble: load the finished blocks when all are present. A caller that shares
            ``out`` with other processes passes False and calls :func:`assemble_blocks`
            under :func:`ntga.outdir.assembly_lock` (``summary.all_present`` says when).

    Returns:
        ``(x_uint8, summary)``: the assembled protected images [N, H, W, C] when every
        block is finished (by this or another process) and ``assemble``, else ``(None, summary)``.
    """
    blocks = _Blocks(job, block_fn, key, out, devices)
    blocks.store.open(fingerprint, resume=resume)
    k_shard, n_shard = shard
    mine = [i for i in range(blocks.plan.num_blocks) if i % n_shard == k_shard]
    # A block counts as finished only if its work files pass their checksums; a damaged
    # one is deleted (with a warning) by load_block and recomputed here.
    present = set(blocks.store.finished(blocks.plan.num_blocks))
    todo = [i for i in mine if i not in present or not blocks.verified(i)]
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="blocks", unit="block",
               disable=not progress, dynamic_ncols=True)
    try:
        blocks.compute(todo, bar, describe)
    finally:
        bar.close()
    if not blocks.all_present():
        return None, RunSummary()
    if not assemble:
        return None, RunSummary(all_present=True)
    return blocks.assemble()


def assemble_blocks(job: BlockJob, block_fn: BlockFn, key: jax.Array, out: str | Path,
                    devices: Sequence[jax.Device] | None = None) -> tuple[np.ndarray, RunSummary]:
    """The protected images of a run whose blocks are all present (see ``run_blocks(assemble=False)``)."""
    return _Blocks(job, block_fn, key, out, devices).assemble()


def _check_finite(index: int, stats: dict[str, Any]) -> None:
    """Stops the run at the first block whose statistics are not finite (nothing such is saved)."""
    bad = sorted(name for name, value in stats.items()
                 if isinstance(value, (int, float, list)) and not np.isfinite(np.asarray(value, float)).all())
    if bad:
        raise UserInputError(f"block {index}: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not finite; the "
                             "settings give the attack no usable numbers (try a smaller --t or --dtype float64)")


def finish_poison_dir(out: str | Path, *, x_poison: np.ndarray, y: np.ndarray, source_indices: np.ndarray,
                      target_indices: np.ndarray | None, x_clean: np.ndarray, class_names: Sequence[str],
                      manifest: dict[str, Any], protected_positions: np.ndarray | None = None) -> Path:
    """Writes the final poison directory into ``out`` and removes the block work files."""
    path = write_poison_dir(out, x=x_poison, y=y, source_indices=source_indices, manifest=manifest,
                            target_indices=target_indices, x_clean=x_clean, class_names=class_names,
                            overwrite=True, protected_positions=protected_positions)
    BlockStore(Path(out)).remove()
    return path
