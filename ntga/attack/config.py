"""Attack settings: a frozen, validated dataclass and the reference's FGSM preset."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real

from ntga.errors import UserInputError
from ntga.pixels import check_norm

__all__ = ["AttackConfig", "reference_fgsm_config"]


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class AttackConfig:
    """Projected gradient ascent on the NTK-GP's target loss (Yuan & Wu, ICML 2021).

    Attributes:
      eps: perturbation budget in [0, 1] pixel units (MNIST 0.3, CIFAR-10 8/255);
        L-inf per pixel, or L2 per image over all pixels.
      norm: "linf" (sign steps) or "l2" (normalised-gradient steps).
      steps: number of PGD iterations.
      step_size: step length; None means the reference's ``1.1 * eps / steps``.
      t: GP training time in the reference's units (normalised by block size * classes).
      diag_reg: ridge relative to the mean diagonal of the block's kernel.
      random_start: start from a uniform random point of the eps-ball (needs a key).
      target_chunk: target images per chunk of the gradient; bounds memory only,
        the gradient over the whole target set is exact.
    """

    eps: float
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = field(default=None)
    t: float = 64.0
    diag_reg: float = 1e-4
    random_start: bool = False
    target_chunk: int = 1000

    def __post_init__(self):
        check_norm(self.norm)
        if not _is_real(self.eps) or self.eps <= 0 or (self.norm == "linf" and self.eps > 1):
            accepted = "0 < eps <= 1 for norm 'linf'" if self.norm == "linf" else "eps > 0 for norm 'l2'"
            raise UserInputError(f"eps={self.eps!r} is invalid; accepted: {accepted} (pixel units in [0, 1])")
        if not _is_int(self.steps) or self.steps < 1:
            raise UserInputError(f"steps={self.steps!r} is invalid; accepted: an integer >= 1")
        if self.step_size is None:
            object.__setattr__(self, "step_size", 1.1 * float(self.eps) / self.steps)
        elif not _is_real(self.step_size) or self.step_size <= 0:
            raise UserInputError(f"step_size={self.step_size!r} is invalid; accepted: a number > 0 (or None "
                                 "for 1.1 * eps / steps)")
        if not _is_real(self.t) or self.t <= 0:
            raise UserInputError(f"t={self.t!r} is invalid; accepted: a finite number > 0")
        if not _is_real(self.diag_reg) or self.diag_reg < 0:
            raise UserInputError(f"diag_reg={self.diag_reg!r} is invalid; accepted: a finite number >= 0")
        if not isinstance(self.random_start, bool):
            raise UserInputError(f"random_start={self.random_start!r} is invalid; accepted: True or False")
        if not _is_int(self.target_chunk) or self.target_chunk < 1:
            raise UserInputError(f"target_chunk={self.target_chunk!r} is invalid; accepted: an integer >= 1")
        # Store plain floats so equal settings hash equally (the jitted attack is cached per config).
        for name in ("eps", "step_size", "t", "diag_reg"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("steps", "target_chunk"):
            object.__setattr__(self, name, int(getattr(self, name)))


def reference_fgsm_config(eps: float, t: float, **kw) -> AttackConfig:
    """The reference implementation's *effective* attack: one signed step of size eps.

    The reference restarts every iteration from the clean block with step eps, so
    its output equals a single FGSM step (REFERENCE.md, "Bug in the reference").

    Args:
      eps: budget, as in :class:`AttackConfig`.
      t: GP time, as in :class:`AttackConfig`.
      **kw: other :class:`AttackConfig` fields (e.g. ``norm``, ``target_chunk``).
    """
    return AttackConfig(eps=eps, t=t, steps=1, step_size=eps, **kw)
