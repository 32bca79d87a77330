"""Training-dynamics detectors: how easily each example is fitted.

Shortcut poisons are learned much faster than the natural content of images:
the availability poisons give a network a feature it fits within an epoch or
two (Huang et al., ICLR 2021, Fig. 1; UDP, Zhu et al., AAAI 2024, which detects
unlearnable examples by how fast simple networks fit them), and many of them are
(close to) linearly separable (Yu et al., KDD 2022; Sandoval-Segura et al.,
NeurIPS 2023). Two detectors follow:

* ``early-loss``: the per-example loss of the suspect model after each of its
  ``--epochs`` epochs of training on the suspect data (:mod:`defenses.detectors.model`);
  the score is the negated area under that loss curve (the mean over the epochs),
  or the negated loss after the first or the last epoch. Low loss = suspicious.
* ``linear``: a softmax-regression classifier fitted on the raw pixels by
  full-batch gradient descent (the fit of the orthogonal-projection breaker,
  :func:`defenses.breakers.projection.fit_linear_classifier`: zero start, centred
  pixels scaled to unit top covariance eigenvalue, ``steps`` steps of size ``lr``);
  the score is each example's margin (its label's logit minus the largest other
  logit) or its negated cross-entropy. A short fit (default 100 steps) ranks the
  examples by how soon a linear model separates them.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from defenses.breakers.projection import MAX_LR, fit_linear_classifier
from ntga.errors import UserInputError
from ntga.pixels import as_float


@dataclasses.dataclass(frozen=True)
class EarlyLossConfig:
    """``--detector early-loss@signal=first``.

    Attributes:
        signal: "area" (negated mean loss over the epochs), "first" or "last" (negated loss
            after the first / last epoch).
    """

    signal: Literal["area", "first", "last"] = "area"


def early_loss_scores(losses: np.ndarray, cfg: EarlyLossConfig) -> np.ndarray:
    """losses [epochs, N] per-example loss after each epoch -> scores [N] (higher = fitted sooner)."""
    losses = np.asarray(losses, np.float64)
    picked = {"area": losses.mean(axis=0), "first": losses[0], "last": losses[-1]}[cfg.signal]
    return -picked


@dataclasses.dataclass(frozen=True)
class LinearConfig:
    """``--detector linear@steps=300,signal=loss``.

    Attributes:
        steps: full-batch gradient steps of the linear fit.
        lr: step size on the normalised pixels, in (0, 3]: the loss's curvature there is at most
            1/2, so the fit is stable for any accepted value (a fit that still diverges is refused,
            naming this setting).
        signal: "margin" (label logit minus the largest other logit) or "loss" (negated cross-entropy).
    """

    steps: int = 100
    lr: float = 1.0
    signal: Literal["margin", "loss"] = "margin"

    def __post_init__(self):
        if self.steps < 1 or not 0 < self.lr <= MAX_LR:
            raise UserInputError(f"linear: steps must be >= 1 and lr in (0, {MAX_LR:g}], got steps={self.steps}, "
                                 f"lr={self.lr}")


def linear_scores(x: np.ndarray, y: np.ndarray, num_classes: int, cfg: LinearConfig) -> tuple[np.ndarray, float]:
    """Scores [N] and the linear model's training accuracy.

    Args:
        x: [N, H, W, C] uint8 or float [0, 1].
        y: [N] int labels.
        num_classes: K.

    Raises:
        UserInputError: the fit diverged (non-finite logits); names ``linear@lr`` to lower.
    """
    flat = jnp.asarray(as_float(np.asarray(x)).reshape(len(x), -1), jnp.float32)
    labels = jnp.asarray(np.asarray(y), jnp.int32)
    w, b = fit_linear_classifier(flat, labels, int(num_classes), int(cfg.steps), float(cfg.lr))
    logits = flat @ w + b[None, :]
    if not bool(jnp.all(jnp.isfinite(logits))):
        raise UserInputError(f"detector linear: the linear fit diverged (non-finite logits) at lr={cfg.lr:g}, "
                             f"steps={cfg.steps}; lower the step size, e.g. linear@lr={cfg.lr / 4:g}")
    own = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    if cfg.signal == "margin":
        others = jnp.where(jax.nn.one_hot(labels, num_classes, dtype=bool), -jnp.inf, logits)
        score = own - jnp.max(others, axis=1)
    else:
        score = own - jax.nn.logsumexp(logits, axis=1)  # log-probability of the label = -CE
    accuracy = float(jnp.mean(jnp.argmax(logits, axis=1) == labels))
    return np.asarray(score, np.float64), accuracy


__all__ = ["EarlyLossConfig", "LinearConfig", "early_loss_scores", "linear_scores"]
