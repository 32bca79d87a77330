"""Resumable checkpoints of network state: a pytree as flat arrays in one ``.npz``.

EM saves its surrogate's training state after every round and SEP the
parameters of its checkpoint ensemble. Both write the pytree's leaves in
``jax.tree_util`` order as ``leaf_0000``, ``leaf_0001``, ... next to a few named
scalar or array extras, atomically, and read them back into the structure of
a template built the same way (so nothing is ever unpickled: the structure
comes from the code, only numbers come from the file). The files are
checksummed work files (:mod:`ntga.workfiles`): a damaged one reads as absent,
so the method redoes that work instead of resuming from bad numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from ntga import workfiles
from ntga.errors import UserInputError

_COUNT = "num_leaves"


def _leaf_name(i: int) -> str:
    return f"leaf_{i:04d}"


def save_tree(path: Path | str, tree: Any, **extras: Any) -> None:
    """Writes ``tree``'s leaves and the named ``extras`` (numbers or arrays) to ``path`` atomically."""
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]
    clash = sorted(set(extras) & {_COUNT, *map(_leaf_name, range(len(leaves)))})
    if clash:
        raise ValueError(f"extras may not be named {clash}")
    workfiles.save_arrays(Path(path), **{_COUNT: np.int64(len(leaves))},
                          **{_leaf_name(i): a for i, a in enumerate(leaves)}, **extras)


def load_tree(path: Path | str, template: Any, *, leading: tuple[int, ...] = (),
              extras: tuple[str, ...] = ()) -> tuple[Any, dict[str, np.ndarray]] | None:
    """Reads :func:`save_tree`'s file into the structure of ``template``.

    Args:
        path: the ``.npz`` file.
        template: a pytree of the expected leaves (arrays or shape/dtype structs).
        leading: extra leading dimensions every stored leaf has (e.g. ``(K,)``
            for K stacked checkpoints of the template).
        extras: names of the extras to return.

    Returns:
        (tree of numpy arrays, {name: array} for ``extras``), or None when the file is
        absent or fails its checksum (it is then deleted; the caller recomputes).

    Raises:
        UserInputError: the file holds other leaves (count, shape or dtype) or
            lacks an extra, i.e. it belongs to another setting; the message says
            to delete it or run without ``--resume``.
    """
    leaves, treedef = jax.tree_util.tree_flatten(template)
    fix = "delete it or run without --resume"
    data = workfiles.load_arrays(path)
    if data is None:
        return None
    missing = [name for name in (_COUNT, *extras) if name not in data]
    if missing:
        raise UserInputError(f"{path} lacks {', '.join(missing)}: not a checkpoint of this method; {fix}")
    if int(data[_COUNT]) != len(leaves):
        raise UserInputError(f"{path} holds {int(data[_COUNT])} network arrays, expected {len(leaves)}; {fix}")
    out = []
    for i, leaf in enumerate(leaves):
        stored = data[_leaf_name(i)]
        want_shape, want_dtype = (*leading, *np.shape(leaf)), np.dtype(leaf.dtype)
        if stored.shape != want_shape or stored.dtype != want_dtype:
            raise UserInputError(f"{path}: network array {i} is {stored.dtype}{list(stored.shape)}, expected "
                                 f"{want_dtype}{list(want_shape)}; {fix}")
        out.append(stored)
    found = {name: data[name] for name in extras}
    return jax.tree_util.tree_unflatten(treedef, out), found


__all__ = ["load_tree", "save_tree"]
