"""Configs, results, losses and the breaker hooks of the victim trainer.

The hook contract (what a breaker's functions receive and must return) is
documented in :mod:`ntga.train`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntga.errors import UserInputError
from ntga.options import check_choice

from ..models import ModelSpec

Array = jax.Array
LossFn = Callable[[Array, Array], Array]
InputLoss = Callable[..., Array]

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "linear", "constant")
TTAS = ("none", "flip")  # test-time augmentation: logits averaged over the listed views


def cross_entropy(logits: Array, targets: Array) -> Array:
    """Softmax cross-entropy per example; logits and targets [B, k] -> [B]."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def mean_squared_error(logits: Array, targets: Array) -> Array:
    """Mean over classes of the squared error (Keras' MSE, as the reference used); [B, k] -> [B]."""
    return jnp.mean(jnp.square(logits - targets), axis=-1)


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "mse": mean_squared_error}


def _check_choice(what: str, value: Any, accepted: Sequence[str]) -> None:
    if value is not None:  # None: the model's default recipe
        check_choice(what, value, accepted)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train a victim; ``None`` fields take the model's default recipe.

    Attributes:
        epochs: passes over the training set.
        batch_size: training batch size (the last partial batch is dropped).
        optimizer: "sgd" | "adam" | None.
        lr: peak learning rate.
        momentum: SGD momentum (0 = plain SGD).
        weight_decay: coupled L2 weight decay.
        schedule: "cosine" (to 0 over all steps) | "linear" (to 0) | "constant" | None.
        augment: random crop + horizontal flip.
        loss: "ce" | "mse" | None.
        standardize: per-channel standardisation with training-set statistics.
        eval_every: evaluate the test set every this many epochs (and after the last).
        nesterov: Nesterov momentum (SGD only).
        label_smoothing: share of each target's mass spread evenly over the classes, in [0, 1),
            for the configured loss only (a breaker's replacement loss and adversarial
            examples use the hard targets).
        warmup: share of the steps over which the learning rate rises linearly from 0 to its
            peak before the schedule's decay, in [0, 1); at least one step is left after it.
        tta: test-time augmentation, "none" | "flip" (logits averaged over the image and its
            mirror image) | None. Evaluation only: training never sees it.
    """

    epochs: int = 30
    batch_size: int = 128
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    augment: bool | None = None
    loss: str | None = None
    standardize: bool = True
    eval_every: int = 1
    nesterov: bool | None = None
    label_smoothing: float | None = None
    warmup: float | None = None
    tta: str | None = None

    def __post_init__(self):
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("loss", self.loss, tuple(LOSSES))
        _check_choice("tta", self.tta, TTAS)
        for name in ("label_smoothing", "warmup"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise UserInputError(f"{name} must be in [0, 1), got {value}")
        for name in ("epochs", "batch_size", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise UserInputError(f"{name} must be a positive integer, got {value!r}")
        if self.lr is not None and not self.lr > 0:
            raise UserInputError(f"lr must be > 0, got {self.lr}")
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise UserInputError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise UserInputError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def resolved(self, spec: ModelSpec) -> "TrainConfig":
        """A copy with every ``None`` replaced by ``spec``'s default."""
        defaults = dict(optimizer=spec.optimizer, lr=spec.lr, momentum=spec.momentum,
                        weight_decay=spec.weight_decay, schedule=spec.schedule,
                        augment=spec.augment, loss=spec.loss, nesterov=spec.nesterov,
                        label_smoothing=spec.label_smoothing, warmup=spec.warmup, tta=spec.tta)
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


@dataclasses.dataclass(frozen=True)
class TrainHooks:
    """Extension points applied inside the jitted train step (contract in the module docstring).

    Attributes:
        batch_transform: ``(key, x [B,H,W,C] pixel units, y int [B]) -> (x, y int [B] | soft [B,k])``.
        adversarial: ``(key, input_loss, x, y) -> x`` with
            ``input_loss(x, y, train=True) -> per-example loss [B]``.
        loss_fn: ``(logits [B,k], targets [B,k]) -> per-example loss [B]``, replacing the configured loss.
        switch_epoch, after: a schedule: from the 0-based epoch ``switch_epoch`` on, the trainer
            uses the hooks ``after`` instead of these (e.g. UEraser-Max for the first epochs, one
            draw afterwards). Both or neither; ``after`` may itself switch again later.
    """

    batch_transform: Callable[[Array, Array, Array], tuple[Array, Array]] | None = None
    adversarial: Callable[[Array, InputLoss, Array, Array], Array] | None = None
    loss_fn: LossFn | None = None
    switch_epoch: int | None = None
    after: "TrainHooks | None" = None

    def __post_init__(self):
        if (self.switch_epoch is None) != (self.after is None):
            raise ValueError("TrainHooks: switch_epoch and after go together")
        if self.switch_epoch is not None and (not isinstance(self.switch_epoch, int) or self.switch_epoch < 0):
            raise ValueError(f"TrainHooks: switch_epoch must be an int >= 0, got {self.switch_epoch!r}")

    def at_epoch(self, epoch: int) -> "TrainHooks":
        """The hooks in force during the 0-based ``epoch`` (following the schedule)."""
        hooks = self
        while hooks.after is not None and epoch >= hooks.switch_epoch:
            hooks = hooks.after
        return hooks


# Members of a composition run in order, member i with ``fold_in(key, i)``; a lone
# member keeps the step's own key, so composing one breaker changes nothing.
def _chain_transforms(fns: Sequence[Callable]) -> Callable:
    if len(fns) == 1:
        return fns[0]

    def transform(key, x, y):
        for i, fn in enumerate(fns):
            x, y = fn(jax.random.fold_in(key, i), x, y)
        return x, y

    return transform


def _at_most_one(named: Sequence[tuple[str, Any]], what: str) -> Any:
    """The one non-None value of ``named`` (or None); two have no single meaning, so refuse."""
    given = [(name, value) for name, value in named if value is not None]
    if len(given) > 1:
        raise UserInputError(f"{' and '.join(name for name, _ in given)} both {what}; "
                             "compose at most one of them with '+'")
    return given[0][1] if given else None


def compose_hooks(*hooks: TrainHooks | None, names: Sequence[str] | None = None) -> TrainHooks:
    """One TrainHooks running the given ones in order: the one merge of a ``+`` composition.

    In a step the trainer runs every batch transform (left to right), then the
    adversarial procedure, then the update with the loss, so an adversarial
    member always acts after the transforms, whatever its position. At most one
    member may replace the loss and at most one may run an adversarial
    procedure (two inner maximisations, e.g. adversarial training and
    UEraser-Max, or two losses have no single meaning), in every phase of the
    schedule. Schedules compose: the result switches at the earliest
    ``switch_epoch`` of its members, to the composition of each member's hooks
    from then on.

    Args:
      *hooks: the members in order; None entries are skipped.
      names: one name per entry of ``hooks`` for error messages (e.g. the
        breakers' names); default ``hook 1``, ``hook 2``, ...

    Raises:
      UserInputError: two members of one phase replace the loss, or two run an
        adversarial procedure; the message names both.
    """
    if names is None:
        names = [f"hook {i + 1}" for i in range(len(hooks))]
    elif len(names) != len(hooks):
        raise ValueError(f"compose_hooks: {len(names)} names for {len(hooks)} hooks")
    named = [(name, h) for name, h in zip(names, hooks) if h is not None]
    transforms = [h.batch_transform for _, h in named if h.batch_transform is not None]
    loss_fn = _at_most_one([(name, h.loss_fn) for name, h in named], "replace the training loss")
    adversarial = _at_most_one([(name, h.adversarial) for name, h in named],
                               "replace each batch by a loss-maximising procedure")
    switches = [h.switch_epoch for _, h in named if h.after is not None]
    switch = min(switches) if switches else None
    after = None
    if switch is not None:
        later = [h.after if h.after is not None and h.switch_epoch == switch else h for _, h in named]
        after = compose_hooks(*later, names=[name for name, _ in named])
    return TrainHooks(
        batch_transform=_chain_transforms(transforms) if transforms else None,
        adversarial=adversarial,
        loss_fn=loss_fn,
        switch_epoch=switch,
        after=after,
    )


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of one training run (accuracies in [0, 1]).

    Attributes:
        final_test_acc: test accuracy after the last epoch.
        peak_test_acc: best test accuracy over the evaluated epochs.
        peak_epoch: 1-based epoch of the peak.
        test_acc_curve: [epochs] test accuracy (NaN where not evaluated).
        train_acc_curve: [epochs] mean training-batch accuracy.
        train_loss_curve: [epochs] mean training loss.
        wall_time_s: wall time of the run including compilation and evaluation
            (shared by all seeds of a vmapped ``train_many_seeds`` call).
        images_per_s: training images per second after the first (compiling)
            step, evaluation excluded (all seeds together when vmapped).
        variables: the trained Flax variables (``params`` and maybe ``batch_stats``), numpy leaves.
        mean, std: float32 [C] per-channel standardisation the trainer fed the network with
            (statistics of ``x_train``, pixel units), or None when ``standardize`` was off.
    """

    final_test_acc: float
    peak_test_acc: float
    peak_epoch: int
    test_acc_curve: np.ndarray
    train_acc_curve: np.ndarray
    train_loss_curve: np.ndarray
    wall_time_s: float
    images_per_s: float
    variables: Any = dataclasses.field(default=None, repr=False, compare=False)
    mean: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    std: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
