"""The NTGA paper's small victims (FNN, FNN-ReLU, CNN) and a fast CPU CNN.

The first three mirror the victims of the NTGA evaluation (Yuan & Wu, ICML 2021,
Sec. 5): layer sizes, activations, pooling and dropout as described there.
Their weights start from Glorot-uniform with zero biases, the Keras defaults
the reference trained with, because the FNN's plain SGD at lr 1e-3 with an MSE
loss is sensitive to the initial scale.

Every module maps images [B, H, W, C] (already standardised, float32) to logits
[B, num_classes] and takes ``train`` (batch statistics and dropout on/off).
Fully connected nets flatten their input; the CNNs flatten after pooling, so
any H, W >= 8 works (Flax infers the flattened size at init). ``dtype`` is the
computation dtype (e.g. bfloat16 for mixed precision); parameters stay float32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Keras' defaults (what the reference victims were trained with).
_glorot = nn.initializers.glorot_uniform()


class FNN(nn.Module):
    """``depth`` x [Dense(width) -> activation] -> Dense(num_classes).

    Attributes:
        num_classes: number of logits.
        width: hidden units per layer (512 in the paper).
        depth: hidden layers (4 in the paper's victims).
        activation: elementwise nonlinearity (erf for "fnn", ReLU for "fnn-relu").
    """

    num_classes: int
    width: int = 512
    depth: int = 4
    activation: Callable[[jax.Array], jax.Array] = jax.lax.erf
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train  # no batch norm / dropout
        x = x.reshape(x.shape[0], -1)
        for _ in range(self.depth):
            x = self.activation(nn.Dense(self.width, kernel_init=_glorot, dtype=self.dtype)(x))
        return nn.Dense(self.num_classes, kernel_init=_glorot, dtype=self.dtype)(x)


class CNN(nn.Module):
    """The NTGA paper's CNN victim.

    [Conv(features, 5x5, SAME) -> ReLU -> MaxPool(3, stride 2, SAME) -> BatchNorm] x 2
    -> Flatten -> Dense(384) -> ReLU -> Dropout(0.5) -> Dense(192) -> ReLU -> Dense(classes).

    Batch norm keeps Keras' epsilon 1e-3 but averages its running statistics
    with momentum 0.9 rather than Keras' 0.99: with 0.99 the running averages
    lag the training-mode statistics for hundreds of steps, so on small
    training sets (e.g. 1,400 digits = 22 steps per epoch) test accuracy
    collapsed to 40-55% while training-mode accuracy was 96%. On MNIST/CIFAR
    (600+ steps per epoch) both settings agree; ``bn_momentum=0.99`` restores
    the reference exactly.
    """

    num_classes: int
    features: int = 64
    dense: Sequence[int] = (384, 192)
    dropout: float = 0.5
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        dense = functools.partial(nn.Dense, kernel_init=_glorot, dtype=self.dtype)
        for _ in range(2):
            x = nn.relu(nn.Conv(self.features, (5, 5), padding="SAME", kernel_init=_glorot, dtype=self.dtype)(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
            x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-3,
                             dtype=self.dtype)(x)
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(dense(self.dense[0])(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        for units in self.dense[1:]:
            x = nn.relu(dense(units)(x))
        return dense(self.num_classes)(x)


class SmallCNN(nn.Module):
    """A fast CNN for CPU experiments (not from a paper).

    3 x [Conv(3x3) -> BatchNorm -> ReLU -> MaxPool(2, SAME)] with channels
    ``width, 2*width, 4*width`` (32-64-128), then global average pooling ->
    Dense(classes). SAME pooling rounds up, so 8x8 inputs end at 1x1 and
    28x28 at 4x4. Average pooling rather than flattening keeps the readout's
    input small (128 features instead of 2,048 on 32x32 images): with
    flattening, SGD at lr 0.05 blew the logits up within a few steps.
    """

    num_classes: int
    width: int = 32
    dtype: Any = jnp.float32
    conv: Callable[..., nn.Module] = nn.Conv  # swappable for layout/algorithm experiments

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for mult in (1, 2, 4):
            x = self.conv(self.width * mult, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype)(x)
            x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding="SAME")
        return nn.Dense(self.num_classes, dtype=self.dtype)(x.mean(axis=(1, 2)))


FNNErf = functools.partial(FNN, activation=jax.lax.erf)
FNNReLU = functools.partial(FNN, activation=nn.relu)

__all__ = ["FNN", "FNNErf", "FNNReLU", "CNN", "SmallCNN"]
