"""Spreading independent blocks over all local JAX devices.

Blocks are independent given the shared target set, so they are embarrassingly
parallel: a group of D blocks is stacked on a leading axis, sharded one block per
device with ``jax.shard_map``, and each device runs the same per-block program on
its local ``[1, ...]`` slice. Because every block, on any number of devices, is
computed by that same per-device program, the output is
identical to a single-device run; tests check this with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``.

For several hosts, run one process per host with ``--shard K/N`` into a shared
output directory (see :mod:`ntga.run.workdir`); within each process this module
uses that host's local devices.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

BlockFn = Callable[..., dict[str, jax.Array]]
"""``block_fn(*per_block, *shared, key) -> dict of arrays``: one block's per-block inputs (e.g. its images
[B, H, W, C] and labels), then the inputs every block shares (e.g. NTGA's target set), then its key."""


class BlockSpreader:
    """Runs ``block_fn`` on groups of same-shaped blocks, one block per device."""

    def __init__(self, block_fn: BlockFn, devices: Sequence[jax.Device] | None = None):
        self.block_fn = block_fn
        self.devices = tuple(devices or jax.local_devices())

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @lru_cache(maxsize=None)
    def _compiled(self, num: int, num_per_block: int, num_shared: int) -> Callable:
        mesh = Mesh(np.array(self.devices[:num]), ("blocks",))

        def per_block(*args):
            # Each device holds exactly one block ([1, ...]); calling block_fn on it
            # unbatched keeps the per-device program identical for any device count
            # (hence identical output) and avoids vmap's batched linear-algebra rules.
            mine, shared, key = args[:num_per_block], args[num_per_block:-1], args[-1]
            out = self.block_fn(*(a[0] for a in mine), *shared, key[0])
            return jax.tree.map(lambda a: a[None], out)

        sharded = jax.shard_map(
            per_block,
            mesh=mesh,
            in_specs=(*(P("blocks"),) * num_per_block, *(P(),) * num_shared, P("blocks")),
            out_specs=P("blocks"),
            # Each device runs an independent block and nothing is reduced across
            # devices, so the replication/varying-axis bookkeeping has nothing to
            # check; with it on, scan carries initialised from constants are rejected.
            check_vma=False,
        )
        return jax.jit(sharded)

    def run(self, per_block: Sequence[np.ndarray], shared: Sequence[Any], keys: jax.Array) -> dict[str, np.ndarray]:
        """Runs ``len(keys) <= num_devices`` blocks in parallel.

        Args:
            per_block: arrays with a leading [G] axis (one entry per block of the group,
                all blocks of equal size), G <= number of devices.
            shared: inputs every block sees, replicated on every device.
            keys: [G] PRNG keys, one per block.

        Returns:
            ``block_fn``'s outputs with a leading [G] axis, as numpy arrays.
        """
        num = len(keys)
        if not 1 <= num <= self.num_devices:
            raise ValueError(f"a group holds 1..{self.num_devices} blocks, got {num}")
        out = self._compiled(num, len(per_block), len(shared))(*per_block, *shared, keys)
        return jax.tree.map(np.asarray, out)
