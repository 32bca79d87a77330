"""SEP's surrogate: one training run that keeps evenly spaced checkpoints, and what is read from them.

Self-ensemble protection (Chen et al., ICLR 2023) needs the intermediate
models of a *single* training run. This module trains a ``ntga.models``
victim with the project's trainer core (``ntga.train.core``: init, epoch
order) and its one jitted train step (same optimizer recipes, standardisation
and batch norm) and snapshots the
variables after evenly spaced steps; it saves/loads those snapshots as flat
numpy arrays so a protection run can resume without retraining; and it reads
the checkpoints' predictions and penultimate features (SEP-FA's class centres).

Checkpoint ``i`` (1-based, of ``n``) is taken after global step
``round(i * T / n)`` of ``T`` steps in all: with the paper's 120 epochs and 15
checkpoints that is the end of every 8th epoch, as in its released code.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ntga.train.inputs import channel_stats, standardize
from ntga.train import TrainConfig, core, make_optimizer, make_train_step
from ntga.errors import UserInputError
from ntga.methods.tree_io import load_tree, save_tree
from ntga.methods.surrogate import readout_features
from ntga.pixels import to_float

Variables = Any  # {"params": ..., "batch_stats": ...}; leaves stacked over checkpoints: [n, ...]


@dataclass(frozen=True)
class Checkpoints:
    """The ensemble of one training run.

    Attributes:
      variables: Flax variables with every leaf stacked over checkpoints, [n, ...] numpy.
      steps: int64 [n] global training step after which each checkpoint was taken.
      train_acc: float64 [epochs] running training accuracy per epoch.
    """

    variables: Variables
    steps: np.ndarray
    train_acc: np.ndarray

    @property
    def count(self) -> int:
        return int(self.steps.shape[0])


def checkpoint_steps(total_steps: int, count: int) -> np.ndarray:
    """Evenly spaced snapshot steps ``round(i * total / count)``, i = 1..count (the last is the end)."""
    if count > total_steps:
        raise UserInputError(f"checkpoints={count} exceeds the {total_steps} training steps; "
                             "use fewer checkpoints or more epochs")
    return np.array([int(np.floor(i * total_steps / count + 0.5)) for i in range(1, count + 1)], np.int64)


@functools.lru_cache(maxsize=8)
def _compiled_init(module, shape: tuple[int, ...]):
    return jax.jit(lambda k: core.init_variables(module, shape, k), compiler_options=core.INIT_COMPILER_OPTIONS)


def init_variables(module, shape: tuple[int, ...], key: jax.Array) -> Variables:
    """Fresh variables (``params`` and, with batch norm, ``batch_stats``) for images of ``shape`` [H, W, C]."""
    variables = _compiled_init(module, tuple(shape))(key)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


@functools.lru_cache(maxsize=8)
def _compiled_step(module, spec, cfg: TrainConfig, total_steps: int, num_classes: int):
    """The optimizer and the jitted train step, cached so that repeated runs of one setting compile once.

    The standardisation statistics are arguments (not constants baked into the
    compiled step), so runs on other data reuse the compilation too.
    """
    tx = make_optimizer(cfg, total_steps)

    def step(state, x_all, y_all, idx, key, mean, std):
        return make_train_step(module, spec, cfg, tx, num_classes, mean, std)(state, x_all, y_all, idx, key)

    return tx, jax.jit(step)


_epoch_order = jax.jit(core.epoch_order, static_argnums=(2, 3))


def train_with_checkpoints(module, spec, x: np.ndarray, y: np.ndarray, num_classes: int, *, epochs: int,
                           batch_size: int, count: int, key: jax.Array, lr: float | None = None,
                           progress: bool = False) -> Checkpoints:
    """Trains ``module`` on clean data and keeps ``count`` evenly spaced checkpoints.

    Args:
      module: a Flax module from ``spec.build``.
      spec: its ``ntga.models.ModelSpec`` (optimizer recipe, batch norm).
      x: uint8 [N, H, W, C] training images.
      y: int [N] labels.
      num_classes: K.
      epochs: passes over the data (the last partial batch of each is dropped).
      batch_size: training batch (capped at N).
      count: number of checkpoints.
      key: PRNG key (init, shuffling, dropout/augmentation).
      lr: peak learning rate (None: the model's default recipe).
      progress: show a bar over epochs.

    Returns:
      Checkpoints.
    """
    n = x.shape[0]
    bsz = min(batch_size, n)
    steps_per_epoch = n // bsz
    total = epochs * steps_per_epoch
    snap_at = checkpoint_steps(total, count)
    cfg = TrainConfig(epochs=epochs, batch_size=bsz, lr=lr).resolved(spec)
    tx, step_fn = _compiled_step(module, spec, cfg, total, int(num_classes))
    mean, std = (jnp.asarray(a) for a in channel_stats(x))
    k_init, k_shuffle, k_step = jax.random.split(key, 3)
    variables = init_variables(module, x.shape[1:], k_init)
    state = dict(params=variables["params"], batch_stats=variables["batch_stats"],
                 opt_state=tx.init(variables["params"]), step=jnp.zeros((), jnp.int32))
    x_all, y_all = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    snap_set = set(snap_at.tolist())
    snaps, train_acc, done = [], [], 0
    for epoch in tqdm(range(epochs), desc="sep surrogate", disable=not progress, leave=False):
        order = _epoch_order(k_shuffle, epoch, n, bsz)
        correct = []
        for i in range(steps_per_epoch):
            state, (_, right) = step_fn(state, x_all, y_all, order[i], k_step, mean, std)
            correct.append(right)
            done += 1
            if done in snap_set:
                snaps.append(jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]}))
        train_acc.append(float(np.sum(jax.device_get(correct))) / (steps_per_epoch * bsz))
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *snaps)
    return Checkpoints(variables=stacked, steps=snap_at, train_acc=np.asarray(train_acc))


def save_checkpoints(path: Path, ckpts: Checkpoints) -> None:
    """Writes the checkpoints atomically (``ntga.methods.tree_io``; leaves stacked over checkpoints)."""
    save_tree(path, ckpts.variables, steps=ckpts.steps, train_acc=ckpts.train_acc)


def load_checkpoints(path: Path, template: Variables, count: int) -> Checkpoints | None:
    """Reads :func:`save_checkpoints`' file back into the structure of ``template`` (unstacked variables).

    Returns None when the file is absent or fails its checksum (then the checkpoints are retrained).

    Raises:
      UserInputError: the file does not hold ``count`` checkpoints of this model.
    """
    loaded = load_tree(path, template, leading=(count,), extras=("steps", "train_acc"))
    if loaded is None:
        return None
    variables, extras = loaded
    if extras["steps"].shape != (count,):
        raise UserInputError(f"{path} holds {extras['steps'].shape[0]} checkpoints, expected {count}; "
                             "delete it or run without --resume")
    return Checkpoints(variables=variables, steps=extras["steps"], train_acc=extras["train_acc"])


# ----------------------------------------------------------------------------- reading the checkpoints


def model_variables(spec, tree: dict) -> dict:
    """The Flax variables of one checkpoint (``batch_stats`` only for batch-norm models)."""
    return {"params": tree["params"], **({"batch_stats": tree["batch_stats"]} if spec.batch_norm else {})}


# The functions below handle ONE checkpoint per call and the loops over
# checkpoints and steps run in Python: XLA:CPU ran the same convolutions about
# 2x slower inside a while loop (lax.fori_loop / lax.scan) than in straight-line
# code (0.61 vs 1.17-1.25 ms per image-gradient, small-cnn width 16 on 28x28),
# and per-call dispatch costs nothing next to a batch's forward and backward pass.
# Factories are cached on their hashable arguments and take the data's
# standardisation statistics as call arguments, so one setting compiles once.


@functools.lru_cache(maxsize=8)
def make_predict(module, spec):
    """Jitted ``predict(tree, x uint8 [B,H,W,C], mean [C], std [C]) -> int [B]``: one checkpoint's classes."""

    def predict(tree, x, mean, std):
        xs = standardize(to_float(x, jnp.float32), mean, std)
        return jnp.argmax(module.apply(model_variables(spec, tree), xs, train=False), -1)

    return jax.jit(predict)


@functools.lru_cache(maxsize=8)
def make_class_sums(module, spec, num_classes: int):
    """Jitted ``sums(tree, x uint8 [B,...], y int [B], mask bool [B], mean, std) -> ([K, D], [K])``.

    One checkpoint's sums of the penultimate features of each class, and the
    class counts, over one batch; summed over batches they give SEP-FA's centres.
    """

    def sums(tree, x, y, mask, mean, std):
        xs = standardize(to_float(x, jnp.float32), mean, std)
        onehot = jax.nn.one_hot(y, num_classes, dtype=jnp.float32) * mask[:, None].astype(jnp.float32)
        feats = readout_features(module, model_variables(spec, tree), xs)[0].astype(jnp.float32)
        return onehot.T @ feats, onehot.sum(0)

    return jax.jit(sums)


def pad_to(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` with zero rows appended up to ``size`` rows (fixed batch shapes: one compilation)."""
    pad = size - a.shape[0]
    return a if pad == 0 else np.concatenate([a, np.zeros((pad, *a.shape[1:]), a.dtype)])


def class_centres(module, spec, trees, x_train, y_train, num_classes, mean, std, bsz) -> jax.Array:
    """SEP-FA's targets: the mean penultimate feature of each class under each checkpoint.

    Args:
      module, spec: the surrogate and its ``ModelSpec``.
      trees: the n checkpoints' variables.
      x_train: uint8 [N, H, W, C] clean training images; y_train: int [N] labels.
      num_classes: K.
      mean, std: [C] standardisation statistics.
      bsz: batch size (fixed; the last batch is padded and masked).

    Returns:
      [n, K, D] float32; a class absent from ``y_train`` gets the mean feature of all images.
    """
    sums_of = make_class_sums(module, spec, num_classes)
    centres = []
    for tree in trees:
        sums, counts = 0.0, 0.0
        for start in range(0, x_train.shape[0], bsz):
            rows = x_train[start:start + bsz].shape[0]
            s, c = sums_of(tree, pad_to(x_train[start:start + bsz], bsz), pad_to(y_train[start:start + bsz], bsz),
                           jnp.arange(bsz) < rows, mean, std)
            sums, counts = sums + s, counts + c
        overall = jnp.sum(sums, axis=0, keepdims=True) / jnp.sum(counts)
        centres.append(jnp.where((counts > 0)[:, None], sums / jnp.maximum(counts, 1.0)[:, None], overall))
    return jnp.stack(centres)


__all__ = ["Checkpoints", "checkpoint_steps", "class_centres", "init_variables", "load_checkpoints", "make_class_sums",
           "make_predict", "model_variables", "pad_to", "readout_features", "save_checkpoints",
           "train_with_checkpoints"]
