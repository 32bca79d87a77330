"""DenseNet-121 with the CIFAR stem (Huang et al., CVPR 2017), in Flax linen.

Growth rate 32, dense blocks of 6-12-24-16 bottleneck layers
(BN-ReLU-conv1x1(4g)-BN-ReLU-conv3x3(g), output concatenated to the input),
transitions BN-ReLU-conv1x1 (compression 0.5) -> 2x2 average pool, then
BN-ReLU -> global average pooling -> dense readout. The ImageNet stem (7x7
stride 2 + max-pool) is replaced by one 3x3 stride-1 conv with 2g channels,
the usual adaptation for 32x32 images (and what lets 8x8 inputs through:
three transitions take 8x8 to 1x1). ``dtype`` is the computation dtype. The
1x1 convolutions (bottlenecks, transitions) are ``PointwiseConv`` matmuls,
which XLA:CPU runs several times faster than its 1x1 convolutions.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from .layers import Conv as _Conv
from .layers import PointwiseConv
from .layers import batch_norm as _bn



class DenseLayer(nn.Module):
    """Bottleneck layer; returns its ``growth`` new channels concatenated to the input."""

    growth: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        y = PointwiseConv(4 * self.growth, dtype=self.dtype)(nn.relu(_bn(train, self.dtype)(x)))
        y = _Conv(self.growth, (3, 3), padding=1, dtype=self.dtype)(nn.relu(_bn(train, self.dtype)(y)))
        return jnp.concatenate([x, y], axis=-1)


class DenseNet(nn.Module):
    """CIFAR-stem DenseNet.

    Attributes:
        num_classes: number of logits.
        stages: bottleneck layers per dense block ((6, 12, 24, 16) = DenseNet-121).
        width: growth rate g (32 for DenseNet-121).
        compression: channel fraction kept by each transition.
    """

    num_classes: int
    stages: Sequence[int] = (6, 12, 24, 16)
    width: int = 32
    compression: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = _Conv(2 * self.width, (3, 3), padding=1, dtype=self.dtype)(x)
        for i, layers in enumerate(self.stages):
            for _ in range(layers):
                x = DenseLayer(self.width, self.dtype)(x, train)
            if i < len(self.stages) - 1:
                channels = int(x.shape[-1] * self.compression)
                x = PointwiseConv(channels, dtype=self.dtype)(nn.relu(_bn(train, self.dtype)(x)))
                x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = nn.relu(_bn(train, self.dtype)(x)).mean(axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x)


DenseNet121 = functools.partial(DenseNet, stages=(6, 12, 24, 16), width=32)
