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

Speed: XLA's CPU atan2 is not vectorised (about 10 ns per float32 element
here, 68% of the ReLU layer and the largest single cost of the cnn kernel's
hot loop). For float32, :func:`atan2` evaluates the angle with Cephes'
``atanf`` polynomial after an octant reduction: plain vectorisable arithmetic,
about 6x faster, within 2.7e-7 rad of the exact angle over normal float32
inputs (XLA's own: 2.3e-7; the float32 spacing near pi is 2.4e-7). float64
keeps ``jnp.arctan2``, bit for bit.
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


_PI = 3.14159265358979323846
_TAN_PI_8 = 0.41421356237309504880


def _atan2_f32(y: jax.Array, x: jax.Array) -> jax.Array:
    """atan2 for float32 from vectorisable arithmetic (Cephes atanf on an octant-reduced argument)."""
    ax, ay = jnp.abs(x), jnp.abs(y)
    big, small = jnp.maximum(ax, ay), jnp.minimum(ax, ay)
    a = small / jnp.where(big > 0, big, 1)  # tan of the angle folded into [0, pi/4]; 0 at the origin
    upper = a > _TAN_PI_8  # atan(a) = pi/4 + atan((a - 1) / (a + 1)) keeps the polynomial's argument small
    z = jnp.where(upper, (a - 1) / (a + 1), a)
    z2 = z * z
    poly = (((8.05374449538e-2 * z2 - 1.38776856032e-1) * z2 + 1.99777106478e-1) * z2 - 3.33329491539e-1) * z2 * z + z
    r = jnp.where(upper, _PI / 4 + poly, poly)
    r = jnp.where(ay > ax, _PI / 2 - r, r)
    r = jnp.where(jnp.signbit(x), _PI - r, r)  # signbit: atan2(+0, -0) = pi as in IEEE / jnp.arctan2
    return jnp.where(jnp.signbit(y), -r, r).astype(y.dtype)


def atan2(y: jax.Array, x: jax.Array) -> jax.Array:
    """``jnp.arctan2``, through :func:`_atan2_f32` for float32 (see the module docstring)."""
    if y.dtype == jnp.float32 and x.dtype == jnp.float32:
        return _atan2_f32(y, x)
    return jnp.arctan2(y, x)


@jax.custom_jvp
def safe_atan2(y: jax.Array, x: jax.Array) -> jax.Array:
    """atan2(y, x) with a derivative that is 0 instead of NaN at the origin.

    Args:
        y: any shape (here: sqrt(q11 q22 - q12^2) >= 0).
        x: same shape as ``y`` (here: q12).

    Returns:
        The angle in [-pi, pi], same shape as the inputs; 0 at (0, 0).
    """
    return atan2(y, x)


@safe_atan2.defjvp
def _safe_atan2_jvp(primals, tangents):
    (y, x), (dy, dx) = primals, tangents
    out = safe_atan2(y, x)
    # d atan2(y, x) = (x dy - y dx) / (x^2 + y^2); (0, 0) only occurs for a
    # zero-variance input with b_std == 0, where every kernel term is 0 anyway.
    denom = jnp.maximum(x * x + y * y, _tiny(x))
    return out, (x * dy - y * dx) / denom
