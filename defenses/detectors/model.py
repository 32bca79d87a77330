"""The suspect model some detectors need: a network trained briefly on the suspect data itself.

Cognitive Distillation distils the model that was trained on the (possibly
protected) data; the training-dynamics detector watches each example's loss
while such a model trains. Both use one model per detection run, trained once
(:class:`SuspectModels` memoises it per setting) with the project's surrogate
trainer (:func:`ntga.methods.surrogate.make_surrogate`: the victims' recipe,
init and jitted update, per-channel standardisation with the suspect images'
statistics, no augmentation), so ``--model small-cnn --epochs 5`` means what it
means for ``defenses.evaluate``. After every epoch the per-example loss of the
whole training set is measured in evaluation mode: ``losses[e, i]``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ntga.errors import UserInputError
from ntga.methods.surrogate import Surrogate, make_surrogate, padded_batches, readout_features
from ntga.models import get_model
from ntga.models.saved import module_overrides
from ntga.pixels import as_float
from ntga.train import core
from ntga.train.core import epoch_order
from ntga.train.inputs import channel_stats, standardize

EVAL_BATCH = 512


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """How the suspect model is trained.

    Attributes:
        model: a victim of ``ntga.models`` that can be a surrogate (not fast-resnet).
        model_opts: module overrides as sorted (key, value) pairs, e.g. (("width", 16),).
        epochs: passes over the suspect data.
        batch_size: training batch size (the last partial batch of an epoch is dropped).
        lr: peak learning rate (None: the victim's own).
    """

    model: str = "small-cnn"
    model_opts: tuple[tuple[str, Any], ...] = ()
    epochs: int = 5
    batch_size: int = 128
    lr: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "model_opts": {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in self.model_opts},
                "epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr}


@dataclasses.dataclass(frozen=True)
class SuspectModel:
    """A model trained on the suspect data and what was measured while it trained.

    Attributes:
        surrogate: its pure functions (``ntga.methods.surrogate.Surrogate``).
        module: the Flax module (for logits and penultimate features).
        state: the final training state (``params``, ``batch_stats``, ``mean``, ``std``, ...).
        losses: float64 [epochs, N] per-example loss after each epoch (evaluation mode).
        train_acc: accuracy on the suspect data after the last epoch.
        wall_time_s: training time including compilation.
    """

    surrogate: Surrogate
    module: nn.Module
    state: Mapping[str, Any]
    losses: np.ndarray
    train_acc: float
    wall_time_s: float

    def standardize(self, x: jax.Array) -> jax.Array:
        return standardize(x, self.state["mean"], self.state["std"])

    def variables(self) -> dict[str, Any]:
        return {"params": self.state["params"], **({"batch_stats": self.state["batch_stats"]}
                                                   if self.state["batch_stats"] else {})}

    def logits_fn(self) -> Callable[[jax.Array], jax.Array]:
        """``f(x [B,H,W,C] float in [0, 1]) -> logits [B, K]`` (evaluation mode, pure)."""
        variables = self.variables()
        return lambda x: self.module.apply(variables, self.standardize(x), train=False).astype(jnp.float32)

    def features_fn(self) -> Callable[[jax.Array], jax.Array]:
        """``f(x) -> penultimate features [B, D]`` (the input of the readout layer)."""
        variables = self.variables()
        return lambda x: readout_features(self.module, variables, self.standardize(x))[0].astype(jnp.float32)


def per_example_losses(sur: Surrogate, state, x: jax.Array, y: jax.Array) -> np.ndarray:
    """[N] loss of every example in evaluation mode (:func:`ntga.train.core.per_example_losses`)."""
    return core.per_example_losses(lambda xb, yb: sur.losses(state, xb, yb), x, y, EVAL_BATCH)


def train_suspect(x: np.ndarray, y: np.ndarray, num_classes: int, key: jax.Array, cfg: ModelConfig,
                  log: Callable[[str], None] = print) -> SuspectModel:
    """Trains ``cfg.model`` on (x, y) for ``cfg.epochs`` epochs, measuring every example's loss each epoch.

    Args:
        x: [N, H, W, C] uint8 or float [0, 1] suspect images.
        y: [N] int labels.
        num_classes: K.
        key: PRNG key (split into init and shuffle keys).
        cfg: the model and its training.

    Raises:
        UserInputError: a model that cannot be a surrogate or take the images, a batch
            larger than the data.
    """
    start = time.perf_counter()
    n = int(x.shape[0])
    if cfg.batch_size > n:
        raise UserInputError(f"--batch-size {cfg.batch_size} exceeds the {n} images to score; use at most {n}")
    steps = n // cfg.batch_size
    overrides = module_overrides(dict(cfg.model_opts))
    sur = make_surrogate(cfg.model, num_classes, overrides=overrides, lr=cfg.lr,
                         total_steps=cfg.epochs * steps, batch_size=cfg.batch_size)
    module = get_model(cfg.model).build(num_classes, **overrides)
    mean, std = channel_stats(np.asarray(x))
    xf = jnp.asarray(as_float(np.asarray(x)), jnp.float32)
    yj = jnp.asarray(np.asarray(y), jnp.int32)
    k_init, k_shuffle, k_step = jax.random.split(key, 3)
    state = sur.init(k_init, xf.shape[1:], mean, std)
    losses = np.zeros((cfg.epochs, n))
    for epoch in range(cfg.epochs):
        order = epoch_order(k_shuffle, epoch, n, cfg.batch_size)
        for i in range(steps):
            rows = order[i]
            state, _ = sur.train_step(state, xf[rows], yj[rows], k_step)
        losses[epoch] = per_example_losses(sur, state, xf, yj)
        log(f"  suspect model {cfg.model}: epoch {epoch + 1}/{cfg.epochs}, mean loss {losses[epoch].mean():.4f}")
    correct = 0
    idx, valid = padded_batches(n, min(EVAL_BATCH, n))
    for i, v in zip(jnp.asarray(idx), jnp.asarray(valid)):
        correct += int(sur.count_correct(state, xf[i], yj[i], v))
    return SuspectModel(surrogate=sur, module=module, state=state, losses=losses, train_acc=correct / n,
                        wall_time_s=time.perf_counter() - start)


class SuspectModels:
    """Trains each suspect model once per detection run (detectors asking for the same one share it)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, num_classes: int, key: jax.Array,
                 log: Callable[[str], None] = print):
        self.x, self.y, self.num_classes, self.key, self.log = x, y, num_classes, key, log
        self._trained: dict[ModelConfig, SuspectModel] = {}

    def get(self, cfg: ModelConfig) -> SuspectModel:
        if cfg not in self._trained:
            self.log(f"training the suspect model {cfg.model} for {cfg.epochs} epoch(s) on {len(self.x)} images")
            self._trained[cfg] = train_suspect(self.x, self.y, self.num_classes, self.key, cfg, log=self.log)
        return self._trained[cfg]


__all__ = ["ModelConfig", "SuspectModel", "SuspectModels", "per_example_losses", "train_suspect"]
