"""Adversarial training's inner maximisation: PGD on the victim's own loss.

Madry et al. (ICLR 2018): each training batch is replaced by
argmax_{||d|| <= eps} loss(x + d, y), approximated by projected gradient
ascent from a random start, with pixels kept in [0, 1]. Against availability
poisons, adversarial training is the classic breaker (Tao et al. 2021; APBench
AT: L-inf 8/255, 10 steps of 2/255).

The ball, steps and start are :mod:`ntga.pixels`'; this PGD runs in
perturbation space with two details of its own, kept so trained victims do not
change: L2 norms are floored at ``1e-12`` (not ``finfo.tiny``) before dividing,
and the L2 step is ``(step_size * g) / ||g||`` (``scale_first``).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ntga.pixels import ascent_step, check_norm, clip_delta, project_delta, random_delta

# Defaults per norm: APBench for L-inf; the common CIFAR-10 L2 setting
# (eps 0.5, step 0.1) for L2.
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}
DEFAULT_STEP = {"linf": 2 / 255, "l2": 0.1}
_FLOOR = 1e-12  # smallest L2 norm divided by (see the module docstring)


def pgd(
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
    key: jax.Array,
    x: jax.Array,
    y: jax.Array,
    *,
    norm: str = "linf",
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
) -> jax.Array:
    """Projected gradient ascent on ``loss_fn(x, y)`` within an eps-ball around x.

    Args:
        loss_fn: scalar loss of a batch (e.g. the batch mean); only the
            direction of its input gradient matters, so a mean and a sum give
            the same steps.
        key: PRNG key for the random start.
        x: [B, H, W, C] clean images in [0, 1].
        y: [B] or [B, k] labels, passed through to ``loss_fn``.
        norm: "linf" (sign steps) or "l2" (normalised-gradient steps).
        eps, step_size, steps: ball radius, step length, number of steps.
        random_start: start uniformly in the L-inf ball / uniformly in the L2
            ball, as in Madry et al.

    Returns:
        [B, H, W, C] adversarial images in [0, 1] with ||x_adv - x|| <= eps
        (no gradient flows back through them).
    """
    check_norm(norm)
    x = jax.lax.stop_gradient(x)
    delta = random_delta(key, x.shape, x.dtype, eps, norm, floor=_FLOOR) if random_start else jnp.zeros_like(x)
    delta = clip_delta(delta, x)
    grad_fn = jax.grad(lambda d: loss_fn(x + d, y))

    def step(_, delta):
        delta = delta + ascent_step(grad_fn(delta), step_size, norm, floor=_FLOOR, scale_first=True)
        # Back into the ball, then a valid image (which cannot leave the ball).
        return project_delta(delta, x, eps, norm, floor=_FLOOR)

    delta = jax.lax.fori_loop(0, steps, step, delta)
    return jax.lax.stop_gradient(x + delta)
