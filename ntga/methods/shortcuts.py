"""Model-free shortcut baselines: ``lsp``, ``ops`` and ``ar``.

Each gives every class a simple, easily learnt signature, so a network trained
on the protected images learns the signature instead of the content.

``lsp`` -- linearly separable perturbations ("synthetic noise"): D. Yu, H. Zhang,
W. Chen, J. Yin, T.-Y. Liu, "Availability Attacks Create Shortcuts", KDD 2022.
A d = gh * gw * C dimensional Gaussian-mixture data set with one well separated
cluster per class is drawn (the paper uses scikit-learn's ``make_classification``:
class centres at distinct vertices of the hypercube [-class_sep, class_sep]^d,
class_sep = 10, each sample ``centre + z @ A_k`` with z ~ N(0, I) and a per-class
A_k with U(-1, 1) entries); each sample is a gh x gw grid of patches, upsampled
by repeating every entry over a patch_size x patch_size patch, and scaled to the
budget. Image i gets its own sample from its class's cluster (``noise=sample-wise``,
paper) or all images of a class share one sample (``noise=class-wise``).
Defaults (paper code): patch 8 on 32x32 (a 4x4 grid) and the L2 norm, each
noise image scaled to L2 = 6/255 * sqrt(H * W * C) (the L2 norm of a uniform
6/255 change): 1.304 for 32x32x3. ``patch_size=None`` keeps the 4x4 grid on any
size: ceil(min(H, W) / 4), i.e. 7 on 28x28 MNIST, 2 on 8x8 digits; a patch that
does not divide a side leaves a narrower last row/column of patches (the paper's
code crops the same way). The default budget applies the paper's formula to
the data's own size (6/255 * 28 = 0.659 on 28x28 MNIST; the paper has no MNIST
setting). Deviations: ``norm=linf`` (scale each noise image to
max |delta| = eps, default 0.3 greyscale / 8/255 colour) is our addition;
pixels are rounded within the budget instead of truncated.

``ops`` -- One-Pixel Shortcut: S. Wu, S. Chen, C. Xie, X. Huang, "One-Pixel
Shortcut: on the Learning Preference of Deep Neural Networks", ICLR 2023. For
each class k in turn, over every position p and every extreme colour xi in
{0, 1}^C, with G(x) = sum_c |x[p, c] - xi_c| over the class's clean images,
pick the (p, xi) maximising mean(G) / var(G) (Eq. 2: a large and stable change)
among pairs no earlier class took; then set that pixel of every image of the
class to xi. ``objective=official`` uses the released code's statistic instead,
mean / std of |x[p, c] - xi_c| over images *and* channels. Unbounded in L-inf
(L0 = one pixel), so no budget is checked. Ties (e.g. MNIST's all-black
borders, variance 0) go to the larger mean change, then to the first position
in row-major order; the variance is floored at 1e-12 (the smallest non-zero
variance of uint8 data over a million images is above 1e-11).

``ar`` -- autoregressive perturbations: P. Sandoval-Segura, V. Singla, J. Geiping,
M. Goldblum, T. Goldstein, D. W. Jacobs, "Autoregressive Perturbations for Data
Poisoning", NeurIPS 2022. Every class gets a random stable AR process (window
3x3, own coefficients per channel; :mod:`ntga.methods.ar_process`); every image
gets its own sample, generated on a (H + 4) x (W + 4) canvas from a Gaussian
start and cropped by 4 (paper: 36x36 -> 32x32), scaled to L2 = 1.0 (the paper's
CIFAR-10 budget; used for every data set, no MNIST setting exists) or, with
``norm=linf``, to max |delta| = eps (default 0.3 / 8/255). Deviations: the
process search (see :mod:`ntga.methods.ar_process`); rounding within budget.

All three run in seconds to about a minute at full scale (no resumable state).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ntga.errors import UserInputError
from ntga.methods.ar_process import DEFAULT_MIN_RESPONSE, find_processes, sample_batch
from ntga.methods.base import MethodSpec, Protected, ProtectTask, grey_or_colour_eps
from ntga.pixels import NORMS, quantize_to_budget, to_float, to_uint8

LSP_L2_PER_PIXEL = 6 / 255  # the LSP paper's L2 radius is 6/255 * sqrt(H W C) (see the docstring)
AR_L2_DEFAULT = 1.0  # the AR paper's CIFAR-10 budget
_BATCH = 1024  # images per jitted chunk (AR: min(_BATCH, N) per call, the last batch padded)


def _check_budget_fields(eps: float | None, norm: str) -> None:
    if norm not in NORMS:
        raise UserInputError(f"norm must be l2 or linf, got {norm!r}")
    if eps is None:
        return
    if not (math.isfinite(eps) and eps > 0.0) or (norm == "linf" and eps > 1.0):
        limit = "(0, 1]" if norm == "linf" else "> 0 (an L2 radius in [0, 1] pixel units)"
        raise UserInputError(f"--eps must be {limit} for norm {norm}, got {eps}")


def _scale_to_budget(noise: jax.Array, eps: float, norm: str) -> jax.Array:
    """Scales every noise image [N, H, W, C] to norm exactly ``eps`` (L2 over all its pixels, or max |.|)."""
    axes = (1, 2, 3)
    if norm == "l2":
        size = jnp.sqrt(jnp.sum(noise * noise, axis=axes, keepdims=True))
    else:
        size = jnp.max(jnp.abs(noise), axis=axes, keepdims=True)
    return noise * (eps / jnp.maximum(size, 1e-30))


def _add_within_budget(x_uint8: np.ndarray, delta: jax.Array, eps: float, norm: str) -> np.ndarray:
    """uint8 ``clip(x + delta, 0, 1)``, rounded so the budget still holds."""
    x = to_float(jnp.asarray(x_uint8), jnp.float32)
    return np.asarray(quantize_to_budget(jnp.clip(x + delta.astype(jnp.float32), 0.0, 1.0), x, eps, norm))


# ----------------------------------------------------------------------------- lsp


@dataclass(frozen=True)
class LSPConfig:
    """Settings of ``lsp``.

    Attributes:
      eps: budget in [0, 1] pixel units; None: L2 6/255*sqrt(H*W*C) at 28x28 grey (0.659) / 32x32x3
        colour (1.304), or L-inf 0.3 grey / 8/255 colour.
      norm: "l2" (paper) or "linf".
      patch_size: side of the constant patches (None: ceil(min(H, W) / 4), a 4x4 grid as the paper's 8 on 32).
      noise: "sample-wise" (each image its own draw from its class's cluster, paper) or "class-wise"
        (one draw per class shared by all its images).
      class_sep: half the side of the hypercube whose vertices are the class centres (paper 10; the
        within-class spread is fixed, so larger values make the noise more class-wise).
    """

    eps: float | None = None
    norm: Literal["l2", "linf"] = "l2"
    patch_size: int | None = None
    noise: Literal["sample-wise", "class-wise"] = "sample-wise"
    class_sep: float = 10.0

    def __post_init__(self):
        _check_budget_fields(self.eps, self.norm)
        patch = self.patch_size
        if patch is not None and not (isinstance(patch, (int, np.integer)) and patch >= 1):
            raise UserInputError(f"patch_size must be an integer >= 1 or none, got {self.patch_size!r}")
        if self.noise not in ("sample-wise", "class-wise"):
            raise UserInputError(f"noise must be sample-wise or class-wise, got {self.noise!r}")
        if not (math.isfinite(self.class_sep) and self.class_sep > 0.0):
            raise UserInputError(f"class_sep must be a finite number > 0, got {self.class_sep}")


def _resolve_lsp(config: LSPConfig, image_shape: tuple[int, ...], num_images: int | None) -> LSPConfig:
    num_channels = image_shape[-1]
    if config.eps is not None:
        return config
    if config.norm == "l2":
        eps = LSP_L2_PER_PIXEL * math.sqrt(math.prod(image_shape))
    else:
        eps = grey_or_colour_eps(None, num_channels)
    return dataclasses.replace(config, eps=eps)


def lsp_grid(height: int, width: int, patch_size: int | None) -> tuple[int, int, int]:
    """(patch, rows, cols): the patch side and the patch grid covering an image (last patches cropped)."""
    patch = patch_size or math.ceil(min(height, width) / 4)
    return patch, math.ceil(height / patch), math.ceil(width / patch)


@partial(jax.jit, static_argnames=("num_classes", "shape", "patch", "sample_wise"))
def lsp_noise(key: jax.Array, labels: jax.Array, num_classes: int, shape: tuple[int, int, int], patch: int,
              class_sep: float, sample_wise: bool) -> jax.Array:
    """Unscaled LSP noise: patch-upsampled draws from per-class Gaussian clusters.

    Args:
      key: PRNG key.
      labels: int [N] classes.
      num_classes: K (at most 2^d, d = grid cells * C).
      shape: (H, W, C) of the images.
      patch: patch side.
      class_sep: class centres are random distinct vertices of [-class_sep, class_sep]^d.
      sample_wise: one draw per image (True) or per class (False).

    Returns:
      float32 [N, H, W, C], constant on every patch of every channel.
    """
    h, w, c = shape
    gh, gw = math.ceil(h / patch), math.ceil(w / patch)
    d = gh * gw * c
    k_vertex, k_sign, k_mix, k_draw = jax.random.split(key, 4)
    # Distinct vertices: the first (up to 16) coordinates encode distinct integers.
    bits = min(d, 16)
    codes = jax.random.choice(k_vertex, 2 ** bits, (num_classes,), replace=False)
    head = (codes[:, None] >> jnp.arange(bits)[None, :]) & 1
    tail = jax.random.bernoulli(k_sign, 0.5, (num_classes, d - bits)).astype(head.dtype)
    centres = class_sep * (2.0 * jnp.concatenate([head, tail], axis=1).astype(jnp.float32) - 1.0)
    mix = jax.random.uniform(k_mix, (num_classes, d, d), jnp.float32, -1.0, 1.0)
    rows = labels if sample_wise else jnp.arange(num_classes)
    z = jax.random.normal(k_draw, (rows.shape[0], d), jnp.float32)
    # lax.map in chunks: gathering a d x d matrix per image at once would need N*d*d floats.
    draws = jax.lax.map(lambda zy: centres[zy[1]] + zy[0] @ mix[zy[1]], (z, rows), batch_size=_BATCH)
    if not sample_wise:
        draws = draws[labels]
    grid = draws.reshape(-1, gh, gw, c)
    return jnp.repeat(jnp.repeat(grid, patch, axis=1), patch, axis=2)[:, :h, :w, :]


def protect_lsp(task: ProtectTask, config: LSPConfig, key: jax.Array) -> Protected:
    """Adds each image's class-cluster patch noise, scaled to the budget."""
    h, w, c = task.x.shape[1:]
    patch, gh, gw = lsp_grid(h, w, config.patch_size)
    if patch > max(h, w):
        raise UserInputError(f"patch_size {patch} exceeds the {h}x{w} images")
    if task.num_classes > 2 ** (gh * gw * c):
        raise UserInputError(f"patch_size {patch} leaves a {gh}x{gw}x{c} grid, too few cells to separate "
                             f"{task.num_classes} classes; use a smaller patch_size")
    noise = lsp_noise(key, jnp.asarray(task.y), task.num_classes, (h, w, c), patch, float(config.class_sep),
                      config.noise == "sample-wise")
    delta = _scale_to_budget(noise, float(config.eps), config.norm)
    info = {"patch_size": patch, "grid": [gh, gw]}
    return Protected(x=_add_within_budget(task.x, delta, float(config.eps), config.norm), y=task.y.copy(), info=info)


# ----------------------------------------------------------------------------- ops


@dataclass(frozen=True)
class OPSConfig:
    """Settings of ``ops``.

    Attributes:
      objective: "paper" (Eq. 2: mean / variance of the channel-summed change over the class) or
        "official" (the released code: mean / std of the per-channel change over images and channels).
    """

    objective: Literal["paper", "official"] = "paper"

    def __post_init__(self):
        if self.objective not in ("paper", "official"):
            raise UserInputError(f"objective must be paper or official, got {self.objective!r}")


def extreme_colours(channels: int) -> np.ndarray:
    """[2^C, C] colours with every channel 0 or 1; channel 0 is the most significant bit."""
    return ((np.arange(2 ** channels)[:, None] >> np.arange(channels)[::-1][None, :]) & 1).astype(np.float64)


def ops_scores(x_class: np.ndarray, objective: str) -> np.ndarray:
    """The search objective for every (position, extreme colour) on one class's images.

    The change of channel c towards colour bit xi_c is xi_c + b_c x_c with
    b_c = 1 - 2 xi_c, so its mean and (co)variance over the class follow from
    the per-pixel channel means and covariances, computed here in float64.

    Args:
      x_class: uint8 [n, H, W, C] clean images of one class (n >= 1).
      objective: "paper" or "official".

    Returns:
      float64 [H * W, 2^C] scores (larger is better).
    """
    n, h, w, c = x_class.shape
    x = to_float(x_class.reshape(n, h * w, c), np.float64)
    colours = extreme_colours(c)
    b = 1.0 - 2.0 * colours  # [Q, C]
    mean_c = x.mean(axis=0)  # [P, C]
    centred = x - mean_c[None]
    if objective == "paper":
        cov = np.einsum("npc,npd->pcd", centred, centred) / n
        mean = colours.sum(axis=1)[None, :] + mean_c @ b.T  # [P, Q]
        var = np.einsum("qc,pcd,qd->pq", b, cov, b)
        return mean / np.maximum(var, 1e-12)
    # Released code: statistics over the n * C values |x[p, c] - xi_c| (b_c^2 = 1, xi_c^2 = xi_c).
    second_c = np.mean(centred * centred, axis=0) + mean_c * mean_c  # E[x_c^2]
    mean = (colours.sum(axis=1)[None, :] + mean_c @ b.T) / c
    second = (colours.sum(axis=1)[None, :] + 2.0 * mean_c @ (colours * b).T + second_c.sum(axis=1)[:, None]) / c
    return mean / np.maximum(np.sqrt(np.maximum(second - mean * mean, 0.0)), 1e-6)


def ops_search(x: np.ndarray, y: np.ndarray, num_classes: int, objective: str) -> dict[int, tuple[int, int, int]]:
    """Class k -> (row, col, colour index) of its shortcut pixel; classes without images are left out.

    Classes are searched in order; a (position, colour) pair taken by an
    earlier class is excluded, as in the paper's code.
    """
    h, w, c = x.shape[1:]
    taken = np.zeros((h * w, 2 ** c), bool)
    chosen = {}
    for k in range(num_classes):
        members = x[y == k]
        if len(members) == 0:
            continue
        score = np.where(taken, -np.inf, ops_scores(members, objective))
        pos, colour = divmod(int(np.argmax(score)), 2 ** c)  # argmax: first maximum on ties
        taken[pos, colour] = True
        chosen[k] = (*divmod(pos, w), colour)
    return chosen


def protect_ops(task: ProtectTask, config: OPSConfig, key: jax.Array) -> Protected:
    """Sets one searched pixel of every image to its class's extreme colour (``key`` is unused)."""
    del key  # deterministic: the choice depends on the data only
    n, c = task.x.shape[0], task.x.shape[-1]
    chosen = ops_search(task.x, task.y, task.num_classes, config.objective)
    colours = to_uint8(extreme_colours(c))
    table = np.zeros((task.num_classes, 3), np.int64)  # row, col, colour per class
    for k, pick in chosen.items():
        table[k] = pick
    out = task.x.copy()
    rows, cols, colour = table[task.y].T
    out[np.arange(n), rows, cols, :] = colours[colour]
    pixels = [{"class": k, "row": r, "col": col, "colour": colours[q].tolist()} for k, (r, col, q) in chosen.items()]
    return Protected(x=out, y=task.y.copy(), info={"pixels": pixels})


# ----------------------------------------------------------------------------- ar


@dataclass(frozen=True)
class ARConfig:
    """Settings of ``ar``.

    Attributes:
      eps: budget in [0, 1] pixel units; None: L2 1.0 (paper, CIFAR-10), or L-inf 0.3 grey / 8/255 colour.
      norm: "l2" (paper) or "linf".
      window: side k of the AR window; each pixel depends on the k*k - 1 before it (paper 3).
      crop: rows/columns generated beyond the image and dropped at the top-left (paper 4).
      min_response: how strongly every class's residual filter must respond to the other classes'
        noise in the process search (see ntga.methods.ar_process; lower it if the search fails).
    """

    eps: float | None = None
    norm: Literal["l2", "linf"] = "l2"
    window: int = 3
    crop: int = 4
    min_response: float = DEFAULT_MIN_RESPONSE

    def __post_init__(self):
        _check_budget_fields(self.eps, self.norm)
        if not (isinstance(self.window, (int, np.integer)) and 2 <= self.window <= 8):
            raise UserInputError(f"window must be an integer in [2, 8], got {self.window!r}")
        if not (isinstance(self.crop, (int, np.integer)) and 0 <= self.crop <= 64):
            raise UserInputError(f"crop must be an integer in [0, 64], got {self.crop!r}")
        if not (math.isfinite(self.min_response) and self.min_response >= 0.0):
            raise UserInputError(f"min_response must be a finite number >= 0, got {self.min_response}")


def _resolve_ar(config: ARConfig, image_shape: tuple[int, ...], num_images: int | None) -> ARConfig:
    num_channels = image_shape[-1]
    if config.eps is not None:
        return config
    eps = AR_L2_DEFAULT if config.norm == "l2" else grey_or_colour_eps(None, num_channels)
    return dataclasses.replace(config, eps=eps)


def ar_noise(key: jax.Array, coeffs: np.ndarray, labels: np.ndarray, size: tuple[int, int], crop: int,
             progress: bool = False) -> np.ndarray:
    """Unscaled AR noise, one fresh sample of its class's process per image.

    Args:
      key: PRNG key; batch b (of min(1024, N) images) uses ``fold_in(key, b)``.
      coeffs: [K, C, k, k] the class processes.
      labels: int [N].
      size: (H, W).
      crop: see :class:`ARConfig`.
      progress: show a progress bar.

    Returns:
      float32 [N, H, W, C].
    """
    n = len(labels)
    batch = min(_BATCH, n)  # one compilation per data set; small sets are not padded to _BATCH
    padded = np.concatenate([labels, np.zeros((-n) % batch, labels.dtype)])
    per_image = jnp.asarray(coeffs)[jnp.asarray(padded)]
    out = np.empty((n, *size, coeffs.shape[1]), np.float32)
    for b, start in enumerate(tqdm(range(0, n, batch), desc="ar batches", disable=not progress, leave=False)):
        part = sample_batch(jax.random.fold_in(key, b), per_image[start:start + batch], size, crop)
        out[start:start + batch] = np.asarray(part)[:min(batch, n - start)]
    return out


def protect_ar(task: ProtectTask, config: ARConfig, key: jax.Array) -> Protected:
    """Adds to every image a fresh sample of its class's AR process, scaled to the budget."""
    h, w, c = task.x.shape[1:]
    if config.window > min(h, w):
        raise UserInputError(f"window {config.window} exceeds the {h}x{w} images")
    k_search, k_noise = jax.random.split(key)
    coeffs, summary = find_processes(k_search, task.num_classes, c, config.window, (h, w), config.crop,
                                     float(config.min_response))
    noise = ar_noise(k_noise, coeffs, task.y, (h, w), config.crop, task.progress)
    if not np.all(np.isfinite(noise)):
        raise RuntimeError("an AR process diverged despite the stability check; try another --seed")
    delta = _scale_to_budget(jnp.asarray(noise), float(config.eps), config.norm)
    info = {**summary, "coefficients": np.round(coeffs.astype(np.float64), 6).tolist()}
    return Protected(x=_add_within_budget(task.x, delta, float(config.eps), config.norm), y=task.y.copy(), info=info)


# budget_norm "linf" only marks the methods as bounded: their configs carry ``norm``, which the
# runner records in the manifest and checks the budget in (L2 by default).
SPECS = {
    "lsp": MethodSpec(
        name="lsp", summary="per-class Gaussian-cluster patch noise, L2 budget (Yu et al., KDD 2022)",
        config_type=LSPConfig, protect=protect_lsp, resolve=_resolve_lsp, budget_norm="linf"),
    "ops": MethodSpec(
        name="ops", summary="one searched pixel per class set to an extreme colour (Wu et al., ICLR 2023)",
        config_type=OPSConfig, protect=protect_ops, resolve=None, budget_norm=None),
    "ar": MethodSpec(
        name="ar", summary="per-class autoregressive noise, L2 budget (Sandoval-Segura et al., NeurIPS 2022)",
        config_type=ARConfig, protect=protect_ar, resolve=_resolve_ar, budget_norm="linf"),
}
