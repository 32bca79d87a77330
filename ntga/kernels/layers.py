"""Infinite-width layers as pure functions on a kernel state (NTK parameterisation).

A network's NNGP and NTK are built layer by layer (Neal 1996; Lee et al. 2018;
Jacot et al. 2018; Arora et al. 2019). Each layer maps a :class:`KernelState`
to a new one. Layout: batch axes are LAST, spatial axes (if any) first, so the
hot elementwise and window-sum loops run over long contiguous [n1, n2] slabs:

    nngp, ntk: [*S, n1, n2]   cross covariance / tangent kernel per position
    cov1:      [*S, n1]       self covariance of each x1 example per position
    cov2:      [*S, n2]       same for x2

where *S is () for fully connected layers and (H, W) for convolutional ones.
Only same-position ("diagonal spatial") covariances are tracked: that is all a
stack of Conv/elementwise layers followed by Flatten needs, because Flatten of
an infinitely wide conv layer averages the per-position covariances.

Self mode: for K(x, x), ``cov1`` and ``cov2`` are None and the self
covariances are read off the diagonal of ``nngp``, and the ReLU angle of each
diagonal pair is pinned to exactly 0 (an example is perfectly correlated with
itself), so values and gradients there are exact instead of round-off noise
amplified by d sqrt(z) / dz at z ~ 1e-16 (see ``_numerics``).

``ntk`` is None until the first layer with weights (the input has no tangent).

Conventions (the same as neural-tangents' ``parameterization="ntk"``):
``W_std`` and ``b_std`` are standard deviations; weights are divided by the
square root of the fan-in, so a layer maps nngp -> W_std^2 * mean_fan_in(nngp)
+ b_std^2 and ntk -> nngp_out + W_std^2 * mean_fan_in(ntk).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ntga.kernels._numerics import safe_atan2, safe_sqrt


class KernelState(NamedTuple):
    """Covariances flowing through the network; see the module docstring for shapes."""

    nngp: jax.Array
    ntk: jax.Array | None
    cov1: jax.Array | None
    cov2: jax.Array | None

    @property
    def self_mode(self) -> bool:
        return self.cov1 is None


def _self_covs(state: KernelState) -> tuple[jax.Array, jax.Array]:
    """(cov1 [*S, n1], cov2 [*S, n2]), read off the diagonal in self mode."""
    if state.self_mode:
        diag = jnp.diagonal(state.nngp, axis1=-2, axis2=-1)
        return diag, diag
    return state.cov1, state.cov2


# Full-precision products: on accelerators the default float32 matmul may use
# reduced-precision (e.g. TF32) passes, far from the 1e-4 float32 tolerance.
def _dot(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


def _einsum(spec: str, *operands: jax.Array) -> jax.Array:
    return jnp.einsum(spec, *operands, precision=lax.Precision.HIGHEST)


def _outer(cov1: jax.Array, cov2: jax.Array) -> jax.Array:
    """[*S, n1] x [*S, n2] -> [*S, n1, n2] products q11 * q22."""
    return cov1[..., :, None] * cov2[..., None, :]


# --------------------------------------------------------------------------- inputs


def dense_input(x1: jax.Array, x2: jax.Array | None) -> KernelState:
    """Input covariances of flattened examples: q = <x1, x2> / d.

    Args:
        x1: [n1, d] flattened inputs.
        x2: [n2, d], or None for K(x1, x1).

    Returns:
        State with nngp [n1, n2] and (cross mode) cov1 [n1], cov2 [n2].
    """
    d = x1.shape[-1]
    if x2 is None:
        return KernelState(nngp=_dot(x1, x1.T) / d, ntk=None, cov1=None, cov2=None)
    return KernelState(
        nngp=_dot(x1, x2.T) / d,
        ntk=None,
        cov1=jnp.sum(x1 * x1, axis=-1) / d,
        cov2=jnp.sum(x2 * x2, axis=-1) / d,
    )


def patches(x: jax.Array, filter_shape: tuple[int, int], strides: tuple[int, int],
            padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Zero-padded sliding windows of images, spatial axes first.

    Args:
        x: [n, H, W, C] images.
        filter_shape: (fh, fw).
        strides: (sh, sw).
        padding: ((lo_h, hi_h), (lo_w, hi_w)) zeros added before windowing.

    Returns:
        [H', W', n, fh * fw * C] windows; the feature order is irrelevant
        because windows are only ever dotted with windows built the same way.
    """
    x = jnp.transpose(x, (1, 2, 0, 3))  # [H, W, n, C]
    x = jnp.pad(x, (padding[0], padding[1], (0, 0), (0, 0)))
    # Separable: fh strided slices along H, then fw along W (fh + fw slices
    # instead of fh * fw keeps the graph, and its compile time, small).
    for axis, (size, stride) in enumerate(zip(filter_shape, strides)):
        out = (x.shape[axis] - size) // stride + 1
        x = jnp.stack([lax.slice_in_dim(x, k, k + (out - 1) * stride + 1, stride, axis) for k in range(size)],
                      axis=3)
    return x.reshape(x.shape[:3] + (-1,))  # [H', W', n, fw, fh, C] -> [H', W', n, K]


def conv_input(p1: jax.Array, p2: jax.Array | None) -> KernelState:
    """Input covariances of the first conv layer, averaged over each window.

    A conv layer on the raw image sees, at output position s, the covariance
    of the two windows: sum over window and channels of x1 * x2, divided by
    the fan-in fh * fw * C. Computing it as a batched matmul of windows fuses
    the input layer and the first window sum into one BLAS call.

    Args:
        p1: [H', W', n1, K] windows from :func:`patches` (K = fh * fw * C).
        p2: [H', W', n2, K], or None for K(x1, x1).

    Returns:
        State whose nngp [H', W', n1, n2] is the window-mean input covariance,
        i.e. what :func:`conv` would output for W_std = 1, b_std = 0.
    """
    k = p1.shape[-1]
    if p2 is None:
        return KernelState(nngp=_einsum("hwik,hwjk->hwij", p1, p1) / k, ntk=None, cov1=None, cov2=None)
    return KernelState(
        nngp=_einsum("hwik,hwjk->hwij", p1, p2) / k,
        ntk=None,
        cov1=jnp.sum(p1 * p1, axis=-1) / k,
        cov2=jnp.sum(p2 * p2, axis=-1) / k,
    )


# --------------------------------------------------------------------------- linear layers


def affine(state: KernelState, W_std: float, b_std: float, ntk_in: jax.Array | None = None) -> KernelState:
    """Applies q -> W_std^2 q + b_std^2 and ntk -> nngp_out + W_std^2 ntk_in.

    ``state`` already holds the fan-in means (of nngp, cov and ntk); ``ntk_in``
    overrides ``state.ntk`` when the caller averaged it separately.
    """
    w2, b2 = W_std**2, b_std**2
    ntk_in = state.ntk if ntk_in is None else ntk_in

    def fc(q):
        return None if q is None else w2 * q + b2

    nngp = fc(state.nngp)
    ntk = nngp if ntk_in is None else nngp + w2 * ntk_in
    return KernelState(nngp=nngp, ntk=ntk, cov1=fc(state.cov1), cov2=fc(state.cov2))


def dense(state: KernelState, W_std: float, b_std: float) -> KernelState:
    """Fully connected layer on [n1, n2] kernels (fan-in means are already the inputs)."""
    return affine(state, W_std, b_std)


def same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """(lo, hi) zeros of "SAME" padding: output ceil(size / stride), extra zero at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def conv_padding(spatial: tuple[int, int], filter_shape: tuple[int, int], strides: tuple[int, int],
                 padding: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Per-axis (lo, hi) padding for "SAME" or "VALID" (VALID pads nothing)."""
    if padding == "VALID":
        return (0, 0), (0, 0)
    return tuple(same_padding(n, f, s) for n, f, s in zip(spatial, filter_shape, strides))  # type: ignore[return-value]


def window_matrix(size: int, window: int, stride: int, pad: tuple[int, int]) -> np.ndarray:
    """[out, size] matrix averaging each zero-padded window of one spatial axis.

    Row p has 1 / window at the in-range inputs of window p; padded positions
    are zeros, so they simply have no column but still count in the mean.
    """
    out = (size + pad[0] + pad[1] - window) // stride + 1
    rows = np.arange(out)[:, None] * stride - pad[0] + np.arange(window)[None, :]  # [out, window]
    inside = (rows >= 0) & (rows < size)
    mat = np.zeros((out, size))
    mat[np.nonzero(inside)[0], rows[inside]] = 1.0 / window
    return mat


def window_mean(q: jax.Array | None, filter_shape: tuple[int, int], strides: tuple[int, int],
                padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array | None:
    """Mean of same-position covariances [H, W, ...] over each conv window -> [H', W', ...].

    A conv output at position s is a sum over the window of inputs times
    independent weights, so its covariance is the window mean of the input
    covariances at matching offsets: only the diagonal spatial entries are
    needed. The window mean is separable and linear, so it is two small
    matrix products (one per spatial axis) with constant banded matrices:
    BLAS-friendly, and its gradient is two more products (a handful of ops
    instead of f^2 shifted slices, which keeps compile times short).
    """
    if q is None:
        return None
    mat_h = jnp.asarray(window_matrix(q.shape[0], filter_shape[0], strides[0], padding[0]), q.dtype)
    mat_w = jnp.asarray(window_matrix(q.shape[1], filter_shape[1], strides[1], padding[1]), q.dtype)
    q = _einsum("ph,hw...->pw...", mat_h, q)  # [H', W, ...]
    return _einsum("qw,pw...->pq...", mat_w, q)  # [H', W', ...]


def conv(state: KernelState, W_std: float, b_std: float, filter_shape: tuple[int, int],
         strides: tuple[int, int], padding: str) -> KernelState:
    """Conv layer (infinitely many channels) on same-position covariances [H, W, ...]."""
    pad = conv_padding(state.nngp.shape[:2], filter_shape, strides, padding)

    def mean(q):
        return window_mean(q, filter_shape, strides, pad)

    pooled = KernelState(nngp=mean(state.nngp), ntk=None, cov1=mean(state.cov1), cov2=mean(state.cov2))
    return affine(pooled, W_std, b_std, ntk_in=mean(state.ntk))


def flatten(state: KernelState) -> KernelState:
    """Flatten an infinitely wide conv layer: the next Dense averages over positions."""

    def mean(q):
        return None if q is None else jnp.mean(q, axis=(0, 1))

    return KernelState(nngp=mean(state.nngp), ntk=mean(state.ntk), cov1=mean(state.cov1), cov2=mean(state.cov2))


# --------------------------------------------------------------------------- nonlinearities


def erf(state: KernelState) -> KernelState:
    """phi = erf: the arcsine kernel (Williams 1997).

    For pre-activations with covariances (q11, q12, q22):
        E[erf(u) erf(v)]   = 2/pi * asin(2 q12 / sqrt((1 + 2 q11)(1 + 2 q22)))
        E[erf'(u) erf'(v)] = 4/pi / sqrt((1 + 2 q11)(1 + 2 q22) - 4 q12^2)
    asin(a / b) is written atan2(a, sqrt(b^2 - a^2)): no division, no clipping,
    and b^2 - a^2 >= 1 + 2 q11 + 2 q22 > 0, so it is smooth everywhere.
    """
    cov1, cov2 = _self_covs(state)
    c = state.nngp
    root = jnp.sqrt(_outer(1 + 2 * cov1, 1 + 2 * cov2) - 4 * c * c)
    nngp = (2 / math.pi) * jnp.arctan2(2 * c, root)
    ntk = None if state.ntk is None else state.ntk * ((4 / math.pi) / root)

    def self_cov(q):  # the same map at q12 = q11 = q22 = q: root = sqrt(1 + 4 q)
        return None if q is None else (2 / math.pi) * jnp.arctan2(2 * q, jnp.sqrt(1 + 4 * q))

    return KernelState(nngp=nngp, ntk=ntk, cov1=self_cov(state.cov1), cov2=self_cov(state.cov2))


def relu(state: KernelState) -> KernelState:
    """phi = max(0, x): the first-order arc-cosine kernel (Cho & Saul 2009).

    With theta the angle between the two pre-activations,
        E[relu(u) relu(v)]     = (sqrt(q11 q22) sin theta + (pi - theta) q12) / (2 pi)
        E[relu'(u) relu'(v)]   = (pi - theta) / (2 pi)
    sqrt(q11 q22) sin theta = sqrt(q11 q22 - q12^2), so theta = atan2 of that and
    q12 (see ``_numerics`` for the derivative at theta = 0). Written so that at
    theta == 0 the result is bitwise q12 / 2, the self-covariance map: perfectly
    correlated pairs (the diagonal, or two all-zero patches) stay exactly so.
    """
    cov1, cov2 = _self_covs(state)
    c = state.nngp
    sin_part = safe_sqrt(_outer(cov1, cov2) - c * c)
    if state.self_mode:
        # On the diagonal of K(x, x) the pair is the same example: sin(theta) is
        # 0 by definition. Computing q11 q22 - q12^2 there leaves round-off
        # (XLA may fuse it into an FMA, whose unrounded product makes it ~1e-16
        # q^2 instead of 0), and d sqrt at 1e-16 is ~1e8: pin it to exact 0.
        n = c.shape[-1]
        same = jnp.eye(n, dtype=bool).reshape((1,) * (c.ndim - 2) + (n, n))
        sin_part = jnp.where(same, 0, sin_part)
    theta = safe_atan2(sin_part, c)
    dot = 0.5 * (1 - theta / math.pi)  # (pi - theta) / (2 pi)
    nngp = sin_part / (2 * math.pi) + dot * c
    ntk = None if state.ntk is None else state.ntk * dot

    def self_cov(q):
        return None if q is None else 0.5 * q

    return KernelState(nngp=nngp, ntk=ntk, cov1=self_cov(state.cov1), cov2=self_cov(state.cov2))


ACTIVATIONS = {"erf": erf, "relu": relu}
