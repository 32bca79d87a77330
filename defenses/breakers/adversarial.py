"""Adversarial training's inner maximisation: PGD on the victim's own loss.

Madry et al. (ICLR 2018): each training batch is replaced by
argmax_{||d|| <= eps} loss(x + d, y), approximated by projected gradient
ascent from a random start, with pixels kept in [0, 1]. Against availability
poisons, adversarial training is the classic breaker (Tao et al. 2021; APBench
AT: L-inf 8/255, 10 steps of 2/255).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

NORMS = ("linf", "l2")

# Defaults per norm: APBench for L-inf; the common CIFAR-10 L2 setting
# (eps 0.5, step 0.1) for L2.
DEFAULT_EPS = {"linf": 8 / 255, "l2": 0.5}
DEFAULT_STEP = {"linf": 2 / 255, "l2": 0.1}


def _l2_norm(v: jax.Array) -> jax.Array:
    """Per-example L2 norm over all but the batch axis, shaped [B, 1, 1, 1]."""
    return jnp.sqrt(jnp.sum(v * v, axis=(1, 2, 3), keepdims=True))


def project(delta: jax.Array, norm: str, eps: float) -> jax.Array:
    """Projects perturbations [B, H, W, C] onto the eps-ball of ``norm``."""
    if norm == "linf":
        return jnp.clip(delta, -eps, eps)
    scale = jnp.minimum(1.0, eps / jnp.maximum(_l2_norm(delta), 1e-12))
    return delta * scale


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
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    x = jax.lax.stop_gradient(x)
    if random_start:
        if norm == "linf":
            delta = jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
        else:
            k_dir, k_rad = jax.random.split(key)
            direction = jax.random.normal(k_dir, x.shape, x.dtype)
            direction = direction / jnp.maximum(_l2_norm(direction), 1e-12)
            # Uniform in the ball: radius ~ eps * u^(1/D).
            dim = x[0].size
            radius = eps * jax.random.uniform(k_rad, (x.shape[0], 1, 1, 1), x.dtype) ** (1.0 / dim)
            delta = direction * radius
    else:
        delta = jnp.zeros_like(x)
    delta = jnp.clip(x + delta, 0.0, 1.0) - x
    grad_fn = jax.grad(lambda d: loss_fn(x + d, y))

    def step(_, delta):
        g = grad_fn(delta)
        if norm == "linf":
            delta = delta + step_size * jnp.sign(g)
        else:
            delta = delta + step_size * g / jnp.maximum(_l2_norm(g), 1e-12)
        delta = project(delta, norm, eps)
        # Stay a valid image. Since x is in [0, 1], clipping only shrinks each
        # coordinate of delta toward 0, so delta stays inside the ball.
        return jnp.clip(x + delta, 0.0, 1.0) - x

    delta = jax.lax.fori_loop(0, steps, step, delta)
    return jax.lax.stop_gradient(x + delta)
