"""``fast-resnet``: a CNN and recipe tuned for test accuracy per CPU-second (ours, not from a paper).

The design borrows the ideas that make airbench (Jordan, arXiv 2404.00498)
reach high CIFAR-10 accuracy in few epochs, re-derived and resized for a
2-core CPU where XLA's convolutions run at tens of GFLOP/s:

* a frozen 2x2 **patch-whitening** first convolution whose filters are the
  eigenvectors of the training images' 2x2 patch covariance, scaled by
  1/sqrt(eigenvalue) (both signs, so GELU keeps the information). It is set
  from the data by :func:`whitening_init` before training (``ModelSpec.data_init``)
  and never updated (``ModelSpec.frozen``);
* three stages of ``conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU``
  whose second convolution is wrapped in a residual connection, every
  convolution **identity-initialised** on its first ``min(in, out)`` filters
  (a dirac kernel), so the net starts close to a shallow one and trains fast;
* batch norm without a learned scale (the scale would only fight the weight
  decay) and with a fast-moving running average (momentum 0.6), because
  with few steps per epoch a slow average lags the weights;
* global max pooling and a bias-free readout whose logits are scaled down
  (x 1/9), which acts like a temperature and keeps the early steps calm.

The recipe that goes with it (label smoothing 0.2, Nesterov SGD with a short
warm-up and a linear decay, a 64x larger learning rate for batch-norm biases,
flip test-time augmentation) is registered in :data:`ntga.models.MODELS`;
``benchmarks/results/fast-resnet.md`` has the accuracy-versus-time curves.

Any H, W >= 8 and any channel count work: the whitening filter has
``2 * 4 * C`` outputs, pooling floors odd sizes, and an 8x8 digit ends at 1x1.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ntga.errors import UserInputError

WHITEN_PATCH = 2  # side of the whitening patches (airbench's choice: 2x2)
WHITEN_EPS = 5e-4  # added to the patch covariance's eigenvalues before 1/sqrt
STAGE_MULTIPLIERS = (1, 2, 4)  # channels of the three stages, in units of ``width``


def _dirac_init(base: nn.initializers.Initializer) -> nn.initializers.Initializer:
    """``base`` with the first min(in, out) filters replaced by identity (centre tap 1).

    A convolution initialised this way passes its input channels through
    unchanged (an implicit residual), while the remaining filters start random.
    """

    def init(key, shape, dtype=jnp.float32):
        kernel = base(key, shape, dtype)
        kh, kw, c_in, c_out = shape
        n = min(c_in, c_out)
        eye = jnp.zeros((kh, kw, c_in, n), dtype).at[kh // 2, kw // 2].set(jnp.eye(c_in, n, dtype=dtype))
        return kernel.at[..., :n].set(eye)

    return init


# PyTorch's default conv init (uniform in +-1/sqrt(fan_in)), which the recipe was tuned with.
_torch_uniform = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def max_pool_floor(x: jax.Array, size: int = 2) -> jax.Array:
    """Non-overlapping max pooling that floors odd sizes, as a reshape + max.

    Same values as ``nn.max_pool(x, (size, size), strides=(size, size))`` with
    VALID padding; written as a reshape because XLA:CPU runs the reduce-window
    gradient (select-and-scatter) several times slower than this.
    """
    b, h, w, c = x.shape
    hh, ww = h // size, w // size
    x = x[:, :hh * size, :ww * size]
    return x.reshape(b, hh, size, ww, size, c).max(axis=(2, 4))


class FastResNet(nn.Module):
    """The ``fast-resnet`` victim (see the module docstring).

    Attributes:
        num_classes: number of logits.
        width: channels of the first stage; the three stages have ``width * (1, 2, 4)``.
        depth: residual ``conv3x3 -> BN -> GELU`` layers per stage after its pooled convolution.
        logit_scale: multiplies the logits (a fixed temperature).
        bn_momentum: Flax batch-norm momentum (running = m * running + (1 - m) * batch).
        residual: add each of those layers to its input (else a plain VGG-like stack).
        dtype: computation dtype (parameters stay float32).
    """

    num_classes: int
    width: int = 32
    depth: int = 1
    logit_scale: float = 1.0 / 9.0
    bn_momentum: float = 0.6
    residual: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        # Filled in from the training data by whitening_init; frozen by the recipe.
        x = nn.Conv(2 * WHITEN_PATCH * WHITEN_PATCH * c, (WHITEN_PATCH, WHITEN_PATCH), padding="VALID",
                    use_bias=True, dtype=self.dtype, name="whiten")(x)
        x = nn.gelu(x)

        def bn(name):
            return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                                use_scale=False, dtype=self.dtype, name=name)

        def conv(width, name):
            return nn.Conv(width, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype,
                           kernel_init=_dirac_init(_torch_uniform), name=name)

        if self.width < 1 or self.depth < 0:
            raise UserInputError(f"fast-resnet needs width >= 1 and depth >= 0, got width={self.width}, "
                                 f"depth={self.depth}")
        for i, mult in enumerate(STAGE_MULTIPLIERS):
            width = self.width * mult
            x = conv(width, f"stage{i}_conv0")(x)
            x = max_pool_floor(x) if min(x.shape[1:3]) >= 2 else x
            x = nn.gelu(bn(f"stage{i}_bn0")(x))
            for j in range(1, self.depth + 1):
                y = nn.gelu(bn(f"stage{i}_bn{j}")(conv(width, f"stage{i}_conv{j}")(x)))
                x = x + y if self.residual else y
        x = x.max(axis=(1, 2))
        logits = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype, kernel_init=_torch_uniform,
                          name="head")(x)
        return logits * self.logit_scale


def whitening_filters(x: np.ndarray, patch: int = WHITEN_PATCH, eps: float = WHITEN_EPS,
                      max_images: int = 10_000, chunk: int = 250) -> np.ndarray:
    """Patch-whitening convolution kernel from training images.

    Args:
        x: standardised training images [N, H, W, C] (float); the first
            ``max_images`` are used (every patch position of each).
        patch: patch side.
        eps: added to each eigenvalue before 1 / sqrt.
        max_images: images that enter the patch covariance.
        chunk: images per accumulation step (bounds the memory of the patch copies).

    Returns:
        kernel [patch, patch, C, 2 * patch * patch * C] (float32): the
        eigenvectors of the uncentred patch covariance, largest eigenvalue
        first, each scaled by 1/sqrt(eigenvalue + eps), followed by their
        negatives (so a GELU after it keeps both signs of every component).
    """
    x = np.asarray(x)[:max_images]
    c = x.shape[-1]
    dim = patch * patch * c
    cov, count = np.zeros((dim, dim)), 0
    for start in range(0, x.shape[0], chunk):
        part = np.asarray(x[start:start + chunk], np.float64)
        windows = np.lib.stride_tricks.sliding_window_view(part, (patch, patch), axis=(1, 2))  # [n,H',W',C,p,p]
        flat = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, dim)  # (p, p, C) order: the conv kernel's
        cov += flat.T @ flat
        count += flat.shape[0]
    eigval, eigvec = np.linalg.eigh(cov / max(count, 1))
    order = np.argsort(eigval)[::-1]
    filters = eigvec[:, order] / np.sqrt(np.maximum(eigval[order], 0.0) + eps)  # columns: one filter each
    filters = np.concatenate([filters, -filters], axis=1)
    return filters.reshape(patch, patch, c, 2 * dim).astype(np.float32)


def whitening_init(variables: dict, x_standardized: np.ndarray) -> dict:
    """``variables`` with the whitening kernel set from ``x_standardized`` [N, H, W, C]."""
    kernel = whitening_filters(x_standardized)
    params = dict(variables["params"])
    whiten = dict(params["whiten"])
    if whiten["kernel"].shape != kernel.shape:
        raise ValueError(f"whitening kernel {whiten['kernel'].shape} vs data {kernel.shape}")
    whiten["kernel"] = jnp.asarray(kernel, whiten["kernel"].dtype)
    params["whiten"] = whiten
    return {**variables, "params": params}


def is_frozen(path: tuple[str, ...]) -> bool:
    """Parameters the recipe never updates: the whitening kernel."""
    return path[:1] == ("whiten",) and path[-1] == "kernel"


def is_norm_bias(path: tuple[str, ...]) -> bool:
    """Batch-norm biases, which the recipe trains with a larger learning rate."""
    return any(part.startswith("stage") and "_bn" in part for part in path) and path[-1] == "bias"


__all__ = ["FastResNet", "max_pool_floor", "whitening_filters", "whitening_init", "is_frozen", "is_norm_bias"]
