"""Merging the training-time hooks of a ``+`` composition.

Breakers act during training through ``defenses.train.TrainHooks`` (contract
in the ``defenses.train`` module docstring). In one jitted step the trainer
runs, in this order: its own crop+flip (if the victim's recipe has it), then
``batch_transform(key, x, y) -> (x, y)``, then ``adversarial(key, input_loss,
x, y) -> x``, then the update with ``loss_fn(logits, targets) -> [B]`` if
given. So in a composition the batch transforms run left to right and the
adversarial procedure always runs after them, whatever its position.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax

from defenses.train import TrainHooks
from ntga.errors import UserInputError


def chain(transforms: Sequence[Callable]) -> Callable:
    """Left-to-right composition of batch transforms; member i gets ``fold_in(key, i)``."""
    transforms = tuple(transforms)
    if len(transforms) == 1:
        return transforms[0]

    def transform(key, x, y):
        for i, fn in enumerate(transforms):
            x, y = fn(jax.random.fold_in(key, i), x, y)
        return x, y

    return transform


def merge_hooks(named: Sequence[tuple[str, TrainHooks]]) -> TrainHooks:
    """Merges the hooks of a composition (named by breaker, in order).

    Batch transforms are chained in order. At most one member may replace
    the loss and at most one may run an adversarial procedure: two losses,
    or two inner maximisations (e.g. adversarial training and UEraser-Max),
    have no single meaning, so this refuses them rather than picking one.

    Raises:
        UserInputError: naming the clashing breakers.
    """
    named = list(named)
    losses = [name for name, hooks in named if hooks.loss_fn is not None]
    adversaries = [name for name, hooks in named if hooks.adversarial is not None]
    if len(losses) > 1:
        raise UserInputError(
            f"breakers {' and '.join(losses)} both replace the training loss; compose at most one of them with '+'"
        )
    if len(adversaries) > 1:
        raise UserInputError(
            f"breakers {' and '.join(adversaries)} both replace each batch by a loss-maximising procedure; "
            "compose at most one of them with '+'"
        )
    transforms = [hooks.batch_transform for _, hooks in named if hooks.batch_transform is not None]
    return TrainHooks(
        batch_transform=chain(transforms) if transforms else None,
        adversarial=next((h.adversarial for _, h in named if h.adversarial is not None), None),
        loss_fn=next((h.loss_fn for _, h in named if h.loss_fn is not None), None),
    )
