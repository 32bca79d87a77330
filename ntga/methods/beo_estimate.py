"""The leave-one-out Gaussian-kernel Bayes-error estimate that ``beo`` ascends, and its feature spaces.

For points ``z_1..z_m`` (flattened pixels or network features) with labels
``y_i``, the kernel ``k(a, b) = exp(-||a - b||^2 / (2 h^2))`` gives each point a
leave-one-out (LOO) class posterior::

    p_i(c) = sum_{j != i, y_j = c} k(z_i, z_j) / sum_{j != i} k(z_i, z_j)

and the plug-in Bayes-error estimate is ``mean_i (1 - max_c p_i(c))``. The
point itself is excluded (j != i): with it, every point would vote for its own
label with weight k(z_i, z_i) = 1 and the estimate would shrink toward 0 as h
does. The posteriors are computed as a row softmax of ``-d^2 / (2 h^2)`` with
the diagonal masked, which is the same ratio without underflow for small h.

``max`` is not differentiable, so the ascent uses a smooth surrogate
(:func:`surrogate`): ``smooth-max`` replaces ``max_c p_i(c)`` by the
log-sum-exp ``tau * log sum_c exp(p_i(c) / tau)``, which lies in
``[max, max + tau * log K]`` and whose gradient is the softmax-weighted
gradient of the posteriors (the authors' public code, cat-claws/
bayes-error-local-averaging, differentiates ``1 - p_i(argmax)`` with the argmax
held fixed, the tau -> 0 limit); ``label`` uses ``1 - p_i(y_i)``, the LOO
kernel classifier's expected error against the true labels.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ntga.errors import UserInputError
from ntga.pixels import to_float

FeatureFn = Callable[[jax.Array], jax.Array]


def pairwise_sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
    """Squared Euclidean distances [n, m] between rows of a [n, F] and b [m, F] (clamped at 0)."""
    sq = jnp.sum(a * a, axis=1)[:, None] + jnp.sum(b * b, axis=1)[None, :] - 2.0 * a @ b.T
    return jnp.maximum(sq, 0.0)


def loo_posteriors(sq_dists: jax.Array, onehot: jax.Array, valid: jax.Array, bandwidth) -> jax.Array:
    """Leave-one-out kernel class posteriors of every point among the same points.

    Args:
      sq_dists: [m, m] squared distances between the points (row = query, column = neighbour).
      onehot: [m, K] one-hot labels.
      valid: [m] bool; False rows/columns are padding and are never neighbours.
      bandwidth: h > 0, the Gaussian kernel's length scale.

    Returns:
      [m, K] posteriors p_i(c); row i excludes point i itself. Rows of padding are meaningless.
    """
    m = sq_dists.shape[0]
    logits = -sq_dists / (2.0 * bandwidth * bandwidth)
    neighbour = valid[None, :] & ~jnp.eye(m, dtype=bool)
    # Softmax over the allowed neighbours = normalised kernel weights, stable for any h.
    weights = jax.nn.softmax(jnp.where(neighbour, logits, -jnp.inf), axis=1)
    return weights @ onehot


def _masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(valid, values, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def bayes_error(post: jax.Array, valid: jax.Array) -> jax.Array:
    """The plug-in Bayes-error estimate ``mean_i (1 - max_c p_i(c))`` over valid rows."""
    return _masked_mean(1.0 - jnp.max(post, axis=1), valid)


def loo_error(post: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """Error rate of the LOO kernel classifier (argmax posterior != label) over valid rows."""
    return _masked_mean((jnp.argmax(post, axis=1) != labels).astype(post.dtype), valid)


def surrogate(post: jax.Array, onehot: jax.Array, valid: jax.Array, objective: str, temperature: float):
    """The smooth quantity ``beo`` ascends (see the module docstring), averaged over valid rows."""
    if objective == "smooth-max":
        soft_max = temperature * jax.nn.logsumexp(post / temperature, axis=1)
        return _masked_mean(1.0 - soft_max, valid)
    if objective == "label":
        return _masked_mean(1.0 - jnp.sum(post * onehot, axis=1), valid)
    raise UserInputError(f"objective must be smooth-max or label, got {objective!r}")


def median_bandwidth(z: jax.Array) -> float:
    """The median heuristic: median pairwise Euclidean distance between distinct rows of z [n, F]."""
    n = z.shape[0]
    if n < 2:
        raise UserInputError("the bandwidth's median heuristic needs at least 2 images; set bandwidth=H")
    d = np.sqrt(np.asarray(pairwise_sq_dists(z, z), np.float64))
    h = float(np.median(d[np.triu_indices(n, 1)]))
    if not h > 0:
        raise UserInputError("all sampled images are identical, so the median heuristic gives bandwidth 0; "
                             "set bandwidth=H (a positive number)")
    return h


def make_feature_fn(features: str | None, x_clean: np.ndarray, num_classes: int, key: jax.Array) -> FeatureFn:
    """The space the kernel works in: ``phi(x [n, H, W, C] floats in [0, 1]) -> [n, F]``.

    Args:
      features: None for flattened pixels; otherwise a victim name of
        ``ntga.models.MODELS`` whose *randomly initialised* copy (weights
        from ``key``, never trained: no pretrained weights exist offline) gives
        the penultimate activations, i.e. the input of its final Dense layer.
        Images are standardised per channel with statistics of ``x_clean``
        first, as the victims are; batch norm runs in inference mode.
      x_clean: uint8 [n, H, W, C] clean images (for the standardisation and the init shapes).
      num_classes: K (sizes the unused readout).
      key: initialises the network.

    Raises:
      UserInputError: unknown model name.
    """
    if features is None:
        return lambda x: x.reshape(x.shape[0], math.prod(x.shape[1:]))  # explicit size: x may be empty
    from ntga.models import get_model  # the victims' registry; imported only when asked for
    from ntga.methods.surrogate import readout_features

    module = get_model(features).build(num_classes=max(int(num_classes), 2))
    sample = to_float(x_clean)
    mean = jnp.asarray(sample.mean(axis=(0, 1, 2)), jnp.float32)
    std = jnp.asarray(sample.std(axis=(0, 1, 2)) + 1e-3, jnp.float32)
    variables = module.init(key, jnp.zeros((1, *x_clean.shape[1:]), jnp.float32), train=False)

    def phi(x: jax.Array) -> jax.Array:
        z = (x.astype(jnp.float32) - mean[None, None, None, :]) / std[None, None, None, :]
        return readout_features(module, variables, z)[0]

    return phi
