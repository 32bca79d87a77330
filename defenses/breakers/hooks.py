"""Merging the training-time hooks of a ``+`` composition.

Breakers act during training through ``ntga.train.TrainHooks`` (contract
in the ``ntga.train`` module docstring). In one jitted step the trainer
runs, in this order: its own crop+flip (if the victim's recipe has it), then
``batch_transform(key, x, y) -> (x, y)``, then ``adversarial(key, input_loss,
x, y) -> x``, then the update with ``loss_fn(logits, targets) -> [B]`` if
given. So in a composition the batch transforms run left to right and the
adversarial procedure always runs after them, whatever its position.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ntga.train import TrainHooks, compose_hooks
from ntga.errors import UserInputError


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
    # A schedule (e.g. UEraser-Max for the first epochs) changes a member's hooks
    # between epochs, so the rules are checked in every phase of the composition.
    for epoch in sorted({0} | _switch_epochs(hooks for _, hooks in named)):
        _check_phase([(name, hooks.at_epoch(epoch)) for name, hooks in named])
    return compose_hooks(*(hooks for _, hooks in named))


def _switch_epochs(members: Iterable[TrainHooks]) -> set[int]:
    epochs = set()
    for hooks in members:
        while hooks.after is not None:
            epochs.add(hooks.switch_epoch)
            hooks = hooks.after
    return epochs


def _check_phase(named: list[tuple[str, TrainHooks]]) -> None:
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
