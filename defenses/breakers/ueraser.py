"""UEraser: adversarial augmentations against unlearnable examples.

Qin et al., "Learning the Unlearnable: Adversarial Augmentations Suppress
Unlearnable Example Attacks" (2023). One UEraser draw applies, per example:

1. plasma brightness: x + intensity * (2 P - 1), intensity ~ U(0, 1);
2. plasma contrast:   (x - 0.5) * 4 P + 0.5;
   (P: a fractal "plasma" map in [0, 1] per example and channel with roughness
   ~ U(0.1, 0.7); both clipped to [0, 1]; the kornia augmentations the
   authors use, reimplemented here in JAX)
3. channel shuffle with probability 1/2;
4. one TrivialAugment-style op chosen uniformly per example (see OPS).

UEraser-Max draws K (default 5) augmentations of every example and trains on
the one with the highest loss under the current model; K = 1 is UEraser-Lite.
The authors maximise only during the first epochs (300 in APBench's
UEraser-Max) and train on one draw afterwards: the breaker's ``max_epochs``
option (default 0 = maximise in every epoch, as our runs are far shorter).

Plasma maps: kornia uses the diamond-square algorithm; here the same kind of
map is built by summing octaves of bilinearly upsampled uniform noise on
grids of 2, 3, 5, 9, ... points (corners on the image corners, as in
diamond-square) with amplitude roughness**octave (a small
roughness gives smooth maps, a large one rough maps), then min-max normalising
per example and channel. This is loop-free over examples and jit-friendly.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


ROUGHNESS = (0.1, 0.7)
INTENSITY = (0.0, 1.0)


def interpolation_matrix(out_size: int, in_size: int) -> np.ndarray:
    """[out_size, in_size] linear-interpolation weights, grid ends on the image ends.

    A static numpy matrix: upsampling by ``A @ grid @ B.T`` compiles to two
    small matmuls (``jax.image.resize`` took seconds to compile here).
    """
    if in_size == 1:
        return np.ones((out_size, 1))
    pos = np.linspace(0.0, in_size - 1.0, out_size)
    low = np.minimum(np.floor(pos).astype(int), in_size - 2)
    frac = pos - low
    weights = np.zeros((out_size, in_size))
    weights[np.arange(out_size), low] = 1.0 - frac
    weights[np.arange(out_size), low + 1] = frac
    return weights


def plasma(key: jax.Array, shape: tuple[int, int, int, int], roughness: jax.Array) -> jax.Array:
    """Fractal noise maps in [0, 1].

    Args:
        key: PRNG key.
        shape: (B, H, W, C).
        roughness: [B] per-example amplitude decay between octaves.

    Returns:
        [B, H, W, C] float maps, each (example, channel) spanning [0, 1].
    """
    batch, height, width, channels = shape
    side = max(height, width)
    octaves = max(1, math.ceil(math.log2(side))) + 1
    grids = [min(2**octave + 1, side) for octave in range(octaves)]
    # One draw for all octaves (random-bit generation dominates compile time on CPU).
    noise = jax.random.uniform(key, (batch, sum(g * g for g in grids), channels), roughness.dtype, -1.0, 1.0)
    total = jnp.zeros(shape, roughness.dtype)
    start = 0
    for octave, grid in enumerate(grids):  # loop over octaves, not examples
        level = noise[:, start : start + grid * grid].reshape(batch, grid, grid, channels)
        start += grid * grid
        rows = jnp.asarray(interpolation_matrix(height, grid), roughness.dtype)
        cols = jnp.asarray(interpolation_matrix(width, grid), roughness.dtype)
        smooth = jnp.einsum("hi,bijc,wj->bhwc", rows, level, cols)
        total = total + (roughness**octave)[:, None, None, None] * smooth
    low = jnp.min(total, axis=(1, 2), keepdims=True)
    high = jnp.max(total, axis=(1, 2), keepdims=True)
    return (total - low) / jnp.maximum(high - low, 1e-12)


def _uniform_per_example(key, batch, bounds, dtype):
    return jax.random.uniform(key, (batch,), dtype, bounds[0], bounds[1])


def plasma_brightness(key: jax.Array, x: jax.Array) -> jax.Array:
    """Adds a signed plasma map scaled by a per-example intensity; clips to [0, 1]."""
    k_r, k_i, k_p = jax.random.split(key, 3)
    rough = _uniform_per_example(k_r, x.shape[0], ROUGHNESS, x.dtype)
    intensity = _uniform_per_example(k_i, x.shape[0], INTENSITY, x.dtype)
    shift = (2 * plasma(k_p, x.shape, rough) - 1) * intensity[:, None, None, None]
    return jnp.clip(x + shift, 0.0, 1.0)


def plasma_contrast(key: jax.Array, x: jax.Array) -> jax.Array:
    """Scales contrast around 0.5 by a plasma map in [0, 4]; clips to [0, 1]."""
    k_r, k_p = jax.random.split(key)
    rough = _uniform_per_example(k_r, x.shape[0], ROUGHNESS, x.dtype)
    return jnp.clip((x - 0.5) * (4 * plasma(k_p, x.shape, rough)) + 0.5, 0.0, 1.0)


def channel_shuffle(key: jax.Array, x: jax.Array, prob: float = 0.5) -> jax.Array:
    """Permutes the channels of each example with probability ``prob``."""
    k_perm, k_apply = jax.random.split(key)
    batch, channels = x.shape[0], x.shape[-1]
    order = jnp.argsort(jax.random.uniform(k_perm, (batch, channels)), axis=-1)  # [B, C] random permutations
    shuffled = jnp.take_along_axis(x, order[:, None, None, :], axis=-1)
    apply = jax.random.bernoulli(k_apply, prob, (batch,))[:, None, None, None]
    return jnp.where(apply, shuffled, x)


# ---------------------------------------------------------------------------
# TrivialAugment (Mueller & Hutter, ICCV 2021): one op per example, uniform
# magnitude. Ranges follow the standard RandAugment ones (rotate +-30 deg,
# shear +-0.3, translate +-0.45 of the side, enhance factors 1 +- 0.9,
# posterize 4..8 bits, solarize threshold 1..0) plus a horizontal flip.
# Equalize is left out (a per-image histogram is awkward without loops and
# adds little next to autocontrast). Geometric ops sample nearest pixels and
# fill with 0, like torchvision's defaults.
# ---------------------------------------------------------------------------


def _luma(img: jax.Array) -> jax.Array:
    """[H, W, C] -> [H, W, 1] (BT.601 luma for RGB, the image itself otherwise)."""
    if img.shape[-1] == 3:
        weights = jnp.asarray([0.299, 0.587, 0.114], img.dtype)
        return jnp.sum(img * weights[None, None, :], axis=-1, keepdims=True)
    return jnp.mean(img, axis=-1, keepdims=True)


def _blend(degenerate, img, factor):
    return jnp.clip(degenerate + factor * (img - degenerate), 0.0, 1.0)


def _affine_nearest(img: jax.Array, matrix: jax.Array, offset: jax.Array) -> jax.Array:
    """out[p] = img[round(matrix @ (p - c) + c + offset)], 0 outside. img [H, W, C]."""
    height, width, _ = img.shape
    centre = jnp.asarray([(height - 1) / 2, (width - 1) / 2], img.dtype)
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=img.dtype), jnp.arange(width, dtype=img.dtype), indexing="ij")
    coords = jnp.stack([rows, cols], axis=-1) - centre[None, None, :]  # [H, W, 2]
    src = jnp.einsum("ij,hwj->hwi", matrix, coords) + centre[None, None, :] + offset[None, None, :]
    src = jnp.rint(src).astype(jnp.int32)
    inside = (src[..., 0] >= 0) & (src[..., 0] < height) & (src[..., 1] >= 0) & (src[..., 1] < width)
    r = jnp.clip(src[..., 0], 0, height - 1)
    c = jnp.clip(src[..., 1], 0, width - 1)
    return jnp.where(inside[..., None], img[r, c], jnp.zeros((), img.dtype))


def _identity(img, m):
    return img


def _brightness(img, m):
    return _blend(jnp.zeros_like(img), img, 1 + 0.9 * m)


def _color(img, m):
    return _blend(jnp.broadcast_to(_luma(img), img.shape), img, 1 + 0.9 * m)


def _contrast(img, m):
    return _blend(jnp.full_like(img, jnp.mean(_luma(img))), img, 1 + 0.9 * m)


def _sharpness(img, m):
    # PIL's "smooth" kernel; borders keep the original pixels, as in PIL.
    kernel = jnp.asarray([[1, 1, 1], [1, 5, 1], [1, 1, 1]], img.dtype) / 13
    height, width, _ = img.shape
    pad = jnp.pad(img, ((1, 1), (1, 1), (0, 0)))
    smooth = sum(kernel[i, j] * pad[i : i + height, j : j + width] for i in range(3) for j in range(3))
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    interior = ((rows > 0) & (rows < height - 1) & (cols > 0) & (cols < width - 1))[..., None]
    return _blend(jnp.where(interior, smooth, img), img, 1 + 0.9 * m)


def _posterize(img, m):
    bits = 8 - jnp.floor(jnp.abs(m) * 4.999)  # 8..4 bits
    step = 2.0 ** (8 - bits)
    return jnp.floor(jnp.rint(img * 255) / step) * step / 255


def _solarize(img, m):
    threshold = 1 - jnp.abs(m)
    return jnp.where(img >= threshold, 1 - img, img)


def _autocontrast(img, m):
    low = jnp.min(img, axis=(0, 1), keepdims=True)
    high = jnp.max(img, axis=(0, 1), keepdims=True)
    stretched = (img - low) / jnp.maximum(high - low, 1e-12)
    return jnp.where(high > low, stretched, img)


# Geometric ops as (matrix, offset) of an output -> source pixel map about the
# centre, so trivial_augment can run every geometric choice as ONE gather.


def _rotate_map(shape, m, dtype):
    angle = m * (30 * math.pi / 180)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    return jnp.stack([jnp.stack([cos, -sin]), jnp.stack([sin, cos])]).astype(dtype), jnp.zeros(2, dtype)


def _shear_x_map(shape, m, dtype):
    return jnp.eye(2, dtype=dtype).at[1, 0].set(0.3 * m), jnp.zeros(2, dtype)


def _shear_y_map(shape, m, dtype):
    return jnp.eye(2, dtype=dtype).at[0, 1].set(0.3 * m), jnp.zeros(2, dtype)


def _translate_x_map(shape, m, dtype):
    return jnp.eye(2, dtype=dtype), jnp.zeros(2, dtype).at[1].set(jnp.rint(0.45 * shape[1] * m))


def _translate_y_map(shape, m, dtype):
    return jnp.eye(2, dtype=dtype), jnp.zeros(2, dtype).at[0].set(jnp.rint(0.45 * shape[0] * m))


def _hflip_map(shape, m, dtype):
    return jnp.diag(jnp.asarray([1.0, -1.0], dtype)), jnp.zeros(2, dtype)


def _identity_map(shape, m, dtype):
    return jnp.eye(2, dtype=dtype), jnp.zeros(2, dtype)


_PIXEL_OPS = (
    ("identity", _identity),
    ("brightness", _brightness),
    ("color", _color),
    ("contrast", _contrast),
    ("sharpness", _sharpness),
    ("posterize", _posterize),
    ("solarize", _solarize),
    ("autocontrast", _autocontrast),
)
_GEOMETRIC_OPS = (
    ("rotate", _rotate_map),
    ("shear-x", _shear_x_map),
    ("shear-y", _shear_y_map),
    ("translate-x", _translate_x_map),
    ("translate-y", _translate_y_map),
    ("hflip", _hflip_map),
)


def _as_image_op(pixel_map):
    return lambda img, m: _affine_nearest(img, *pixel_map(img.shape, m, img.dtype))


# (name, op(img [H, W, C], signed magnitude m in [-1, 1]) -> img), chosen uniformly.
OPS: tuple[tuple[str, Callable[[jax.Array, jax.Array], jax.Array]], ...] = _PIXEL_OPS + tuple(
    (name, _as_image_op(fn)) for name, fn in _GEOMETRIC_OPS
)


def trivial_augment(key: jax.Array, x: jax.Array) -> jax.Array:
    """Applies one uniformly chosen op from OPS per example at a uniform signed magnitude.

    Args:
        key: PRNG key.
        x: [B, H, W, C] in [0, 1].

    Returns:
        [B, H, W, C] in [0, 1].
    """
    k_op, k_mag = jax.random.split(key)
    batch = x.shape[0]
    op = jax.random.randint(k_op, (batch,), 0, len(OPS))
    magnitude = jax.random.uniform(k_mag, (batch,), x.dtype, -1.0, 1.0)
    n_pixel = len(_PIXEL_OPS)
    pixel_branches = [fn for _, fn in _PIXEL_OPS]
    maps = [fn for _, fn in _GEOMETRIC_OPS] + [_identity_map]

    def one(img, index, m):
        # Pixel ops: index < n_pixel; otherwise the identity pixel op (0).
        img = jax.lax.switch(jnp.where(index < n_pixel, index, 0), pixel_branches, img, m)
        # Geometric ops: one gather with the chosen map (the identity map is exact).
        chosen = jnp.where(index < n_pixel, len(maps) - 1, index - n_pixel)
        matrix, offset = jax.lax.switch(chosen, [lambda m, f=f: f(img.shape, m, img.dtype) for f in maps], m)
        return _affine_nearest(img, matrix, offset)

    return jnp.clip(jax.vmap(one)(x, op, magnitude), 0.0, 1.0)


def ueraser_augment(key: jax.Array, x: jax.Array) -> jax.Array:
    """One UEraser draw for a batch [B, H, W, C] in [0, 1] -> same shape in [0, 1]."""
    k_b, k_c, k_s, k_t = jax.random.split(key, 4)
    x = plasma_brightness(k_b, x)
    x = plasma_contrast(k_c, x)
    x = channel_shuffle(k_s, x)
    return trivial_augment(k_t, x)


def ueraser_max(
    per_example_loss: Callable[[jax.Array, jax.Array], jax.Array],
    key: jax.Array,
    x: jax.Array,
    y: jax.Array,
    draws: int = 5,
    augment: Callable[[jax.Array, jax.Array], jax.Array] = ueraser_augment,
) -> jax.Array:
    """UEraser-Max: the highest-loss of ``draws`` augmentations of every example.

    Draw d uses ``jax.random.split(key, draws)[d]``. The draws are evaluated
    one after another with ``lax.map`` so the model always sees batches of the
    training batch size (BatchNorm statistics stay comparable).

    Args:
        per_example_loss: (x [B, H, W, C], y) -> [B] losses under the current model.
        key: PRNG key.
        x: [B, H, W, C] in [0, 1].
        y: [B] or [B, k] labels.
        draws: K >= 1.
        augment: (key, x) -> augmented x (UEraser's by default).

    Returns:
        [B, H, W, C]: for each example, the draw with the largest loss.
    """

    def one(k):
        x_aug = augment(k, x)
        return x_aug, per_example_loss(x_aug, y)

    candidates, losses = jax.lax.map(one, jax.random.split(key, draws))  # [K, B, H, W, C], [K, B]
    best = jnp.argmax(losses, axis=0)  # [B]
    chosen = jnp.take_along_axis(candidates, best[None, :, None, None, None], axis=0)[0]
    return jax.lax.stop_gradient(chosen)
