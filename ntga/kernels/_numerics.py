"""Square root and angle with derivatives that stay finite where the kernel is not smooth.

The ReLU (arc-cosine) kernel depends on the angle between two pre-activations,
theta = atan2(sqrt(q11 q22 - q12^2), q12). At perfectly correlated pairs
(q12^2 == q11 q22, e.g. the diagonal of K(x, x), or two all-zero patches) the
inner square root is 0 and its textbook derivative 1 / (2 sqrt(0)) is infinite,
which autodiff turns into inf * 0 = NaN. Rather than clipping a correlation and
calling arccos (whose derivative is infinite at +-1 too), we compute the angle
with atan2 and give the two primitives below a one-sided rule: the derivative
of sqrt at 0 is defined as 0, and atan2's derivative guards its denominator.

With these rules gradients are finite everywhere and values are untouched.
Exactness on the diagonal of K(x, x) additionally needs the angle there to be
exactly 0, which ``layers.relu`` pins in self mode (round-off would otherwise
leave q11 q22 - q12^2 ~ 1e-16 q^2, where d sqrt is ~1e8).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _tiny(x: jax.Array) -> jax.Array:
    return jnp.asarray(jnp.finfo(x.dtype).tiny, x.dtype)


@jax.custom_jvp
def safe_sqrt(x: jax.Array) -> jax.Array:
    """sqrt(max(x, 0)), whose derivative is 0 (not inf) where x <= 0 or x is denormal-small.

    Args:
        x: any shape; negative values (round-off below an exact 0) count as 0.

    Returns:
        The elementwise square root, same shape and dtype as ``x``.
    """
    return jnp.sqrt(jnp.maximum(x, 0))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    out = safe_sqrt(x)
    positive = x > _tiny(x)
    # Evaluate 1 / (2 sqrt) on a guarded argument so the unused branch of the
    # `where` is finite too (a NaN there would poison reverse-mode sums).
    slope = 0.5 / jnp.sqrt(jnp.where(positive, x, 1))
    return out, jnp.where(positive, slope * dx, 0)


@jax.custom_jvp
def safe_atan2(y: jax.Array, x: jax.Array) -> jax.Array:
    """atan2(y, x) with a derivative that is 0 instead of NaN at the origin.

    Args:
        y: any shape (here: sqrt(q11 q22 - q12^2) >= 0).
        x: same shape as ``y`` (here: q12).

    Returns:
        The angle in [-pi, pi], same shape as the inputs; 0 at (0, 0).
    """
    return jnp.arctan2(y, x)


@safe_atan2.defjvp
def _safe_atan2_jvp(primals, tangents):
    (y, x), (dy, dx) = primals, tangents
    out = safe_atan2(y, x)
    # d atan2(y, x) = (x dy - y dx) / (x^2 + y^2); (0, 0) only occurs for a
    # zero-variance input with b_std == 0, where every kernel term is 0 anyway.
    denom = jnp.maximum(x * x + y * y, _tiny(x))
    return out, (x * dy - y * dx) / denom
