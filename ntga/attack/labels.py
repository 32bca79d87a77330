"""Labels for the attack: integer classes -> one-hot rows of the GP's targets."""

from __future__ import annotations

import numpy as np

from ntga.errors import UserInputError

__all__ = ["one_hot"]


def one_hot(labels, num_classes: int, dtype=np.float32) -> np.ndarray:
    """Integer labels [n] -> one-hot rows [n, num_classes] (numpy).

    Raises:
        UserInputError: labels that are not integers in ``[0, num_classes)``.
    """
    labels = np.asarray(labels)
    if num_classes < 1:
        raise UserInputError(f"num_classes={num_classes} is invalid; expected an integer >= 1")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UserInputError(f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserInputError(
            f"labels range over [{labels.min()}, {labels.max()}]; accepted: integers in [0, {num_classes - 1}]")
    return np.eye(num_classes, dtype=dtype)[labels]
