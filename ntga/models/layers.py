"""Layers shared by the CIFAR-stem victims (ResNet, WRN, DenseNet).

``PointwiseConv`` computes a 1x1 convolution as a matmul over the channel
axis (``nn.Dense``), subsampling first when strided. It is the same function
as ``nn.Conv(features, (1, 1), strides=s, padding="SAME")`` with the kernel
reshaped from [1, 1, C, F] to [C, F], but XLA:CPU runs 1x1 kernels through
its convolution emitter far slower than through its matmul: forward +
backward of [128, 8, 8, 512] -> 128 channels took ~300 ms as a convolution
and 32-52 ms as a dot (one-off measurement, shared 2-core machine), and a
training step of DenseNet-121's first dense block runs ~1.5x faster with it
(benchmarks/results/victims.md). Half of DenseNet-121's convolutions are 1x1.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# He-normal with fan-out, torchvision's initialisation for these networks;
# fan-out of a [C, F] dense kernel equals that of a [1, 1, C, F] conv kernel.
he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
Conv = functools.partial(nn.Conv, use_bias=False, kernel_init=he_fan_out)


def batch_norm(train: bool, dtype: Any) -> nn.BatchNorm:
    """PyTorch's batch-norm defaults (momentum 0.1 = 0.9 in Flax's convention, epsilon 1e-5)."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)


class PointwiseConv(nn.Module):
    """Bias-free 1x1 convolution with stride ``stride`` and SAME padding, as a matmul.

    Attributes:
        features: output channels.
        stride: spatial stride (keeps rows/columns 0, s, 2s, ...; SAME padding
            of a 1x1 kernel never pads).
        dtype: computation dtype.
    """

    features: int
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.stride > 1:
            x = x[:, ::self.stride, ::self.stride, :]
        return nn.Dense(self.features, use_bias=False, kernel_init=he_fan_out, dtype=self.dtype)(x)
