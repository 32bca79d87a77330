"""Orthogonal projection (Sandoval-Segura et al., "What Can We Learn from
Unlearnable Datasets?", NeurIPS 2023).

Many availability poisons are (close to) linearly separable shortcuts: a linear
classifier on raw pixels already fits the poisoned training set. Fitting one,
taking an orthonormal basis Q [D, k] of its weight columns (QR), and removing
those k directions from every training image, X <- X - (X Q) Q^T, erases the
shortcut the linear model found, while natural image content, which is not
linearly separable, mostly survives. Test images are not touched.

What exactly happens here:

1. images -> float32 [N, D] in [0, 1] (D = H*W*C);
2. a softmax-regression classifier (W [D, k], b [k], zero init, so the fit is
   deterministic) is fitted by full-batch gradient descent (optax.sgd) for
   ``steps`` steps, one jitted ``lax.scan``, on centred features scaled to unit
   top covariance eigenvalue (see :func:`fit_linear_classifier` for why GD and
   why the scaling); k = max label + 1;
3. Q = reduced QR of W; X <- X - (X Q) Q^T;
4. back to the pixel range by ONE global affine map
   x <- (x - lo) / (hi - lo), lo = min(0, min X), hi = max(1, max X)
   (the identity when the projected pixels already lie in [0, 1]).

Why step 4 is a global affine map and not clipping: after step 3 every
example has Q^T x = 0. A global affine map keeps Q^T x equal to the same
constant for all examples (-lo / (hi - lo) * Q^T 1), so the removed directions
stay free of any label information; per-pixel clipping is non-linear and would
re-inject an example-dependent component along Q.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntga.errors import UserInputError
from ntga.pixels import as_float, check_images

# Largest accepted step size of the linear fit (the orthogonal-projection breaker's and the
# linear detector's ``lr``): on the normalised features the loss's curvature is at most 1/2, so
# gradient descent cannot diverge below lr = 4; 3 leaves room for the power-iteration estimate
# of the top eigenvalue being a little low.
MAX_LR = 3.0


def top_eigenvalue(x: jax.Array, iterations: int = 50) -> jax.Array:
    """Largest eigenvalue of x^T x / N for x [N, D], by power iteration (deterministic start)."""
    def body(_, v):
        w = x.T @ (x @ v) / x.shape[0]
        return w / jnp.maximum(jnp.linalg.norm(w), 1e-30)

    v = jax.lax.fori_loop(0, iterations, body, jnp.ones((x.shape[1],), x.dtype) / jnp.sqrt(x.shape[1]))
    return v @ (x.T @ (x @ v)) / x.shape[0]


@partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_linear_classifier(
    x: jax.Array, y: jax.Array, num_classes: int, steps: int = 300, lr: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Full-batch softmax regression on flattened pixels by plain gradient descent.

    Why gradient descent and not Adam: started from zero, GD moves W only
    along directions in which the classes differ (the gradient is a sum of
    label-weighted examples), so span(W) is the shortcut the data offers.
    Adam's per-coordinate step sizes rotate W away from that span; on a toy
    class-wise pattern the projection then leaves most of the shortcut intact
    (tests/test_breakers_transforms.py). For a step size that needs no tuning
    across image sizes, features are centred and scaled so the covariance's
    largest eigenvalue is 1 (the loss's curvature is then at most 1/2 in
    every direction, so any lr below 4 is stable; at most :data:`MAX_LR` = 3 is accepted,
    1 is the default); this only rescales W, not its span.

    Args:
        x: [N, D] float features.
        y: [N] integer labels in [0, num_classes).
        num_classes: k.
        steps: full-batch gradient steps.
        lr: step size on the normalised features.

    Returns:
        (W [D, k], b [k]) acting on the raw features x.
    """
    mean = jnp.mean(x, axis=0)
    centred = x - mean[None, :]
    scale = 1.0 / jnp.sqrt(jnp.maximum(top_eigenvalue(centred), 1e-30))
    features = centred * scale
    params = (jnp.zeros((x.shape[1], num_classes), x.dtype), jnp.zeros((num_classes,), x.dtype))
    optimizer = optax.sgd(lr)
    # One-hot targets, not integer labels: the integer form's gradient is a
    # scatter that XLA:CPU constant-folds for seconds (with an alarm) at N = 50,000.
    targets = jax.nn.one_hot(y, num_classes, dtype=x.dtype)

    def loss(p):
        logits = features @ p[0] + p[1][None, :]
        return jnp.mean(optax.softmax_cross_entropy(logits, targets))

    def step(carry, _):
        p, state = carry
        grads = jax.grad(loss)(p)
        updates, state = optimizer.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), None

    ((w, b), _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    # Undo the normalisation: logits = ((x - mean) * scale) @ w + b.
    w_raw = w * scale
    return w_raw, b - mean @ w_raw


def linear_accuracy(weights: jax.Array, bias: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """Accuracy of a linear classifier on [N, D] features."""
    return jnp.mean(jnp.argmax(x @ weights + bias[None, :], axis=-1) == y)


def orthonormal_basis(weights: jax.Array) -> jax.Array:
    """Orthonormal basis Q [D, k] of the columns of W [D, k] (reduced QR)."""
    q, _ = jnp.linalg.qr(weights, mode="reduced")
    return q


def project_out(x: jax.Array, q: jax.Array) -> jax.Array:
    """Removes span(Q) from every row: X - (X Q) Q^T. x [N, D], q [D, k] -> [N, D]."""
    return x - (x @ q) @ q.T


def rescale_to_unit(x: jax.Array) -> jax.Array:
    """The global affine map of step 4 (see module doc): [N, D] -> [N, D] in [0, 1]."""
    low = jnp.minimum(jnp.min(x), 0.0)
    high = jnp.maximum(jnp.max(x), 1.0)
    return (x - low) / (high - low)


def orthogonal_projection(
    x: np.ndarray, y: np.ndarray, steps: int = 300, lr: float = 1.0
) -> np.ndarray:
    """Steps 1-4 of the module doc on a training set.

    Args:
        x: [N, H, W, C] uint8 or float [0, 1] training images.
        y: [N] integer labels.
        steps, lr: the linear classifier's full-batch gradient descent.

    Returns:
        [N, H, W, C] float32 in [0, 1].
    """
    x = check_images(x, "breaker 'orthogonal-projection'", strict=False)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise UserInputError(
            f"breaker 'orthogonal-projection': labels must be integers [N={x.shape[0]}], got {y.dtype} {y.shape}"
        )
    flat = jnp.asarray(as_float(x).reshape(x.shape[0], -1), jnp.float32)
    labels = jnp.asarray(y, jnp.int32)
    num_classes = int(y.max()) + 1
    weights, _ = fit_linear_classifier(flat, labels, num_classes, int(steps), float(lr))
    projected = rescale_to_unit(project_out(flat, orthonormal_basis(weights)))
    return np.asarray(projected, np.float32).reshape(x.shape)
