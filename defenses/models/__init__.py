"""Victim models: Flax (linen) classifiers in a plain dict registry.

``MODELS`` maps each command-line name (DESIGN.md contract 3) to a
:class:`ModelSpec` that knows how to build the module and how the victim is
trained by default (loss, optimizer recipe, augmentation), so
``defenses.train`` needs nothing but the name::

    spec = get_model("resnet18")
    module = spec.build(num_classes=10)              # full size
    tiny = spec.build(num_classes=10, width=8, stages=(1, 1, 1, 1))  # for tests
    variables = module.init(key, x, train=False)     # x: [B, H, W, C] float32
    logits = module.apply(variables, x, train=False) # [B, num_classes]

Every module takes standardised images [B, H, W, C] (any H, W >= 8, any C)
and a ``train`` flag; modules with batch norm keep running statistics in the
``batch_stats`` collection, modules with dropout draw from the ``dropout`` rng.

Default recipes (NTGA paper Sec. 5 and its evaluation script; APBench for
the SGD victims):

======== ======= ==================================== ======== =========
name     loss    optimizer                            schedule augment
======== ======= ==================================== ======== =========
fnn      mse     SGD lr 1e-3, no momentum             constant no
fnn-relu ce      Adam lr 1e-3                         constant no
cnn      ce      Adam lr 1e-3                         constant no
resnet18 ce      SGD lr 0.1, momentum 0.9, wd 5e-4    cosine   crop+flip
densenet ce      SGD lr 0.1, momentum 0.9, wd 5e-4    cosine   crop+flip
wrn      ce      SGD lr 0.1, momentum 0.9, wd 5e-4    cosine   crop+flip
small-cnn ce     SGD lr 0.05, momentum 0.9, wd 5e-4   cosine   no
======== ======= ==================================== ======== =========

``small-cnn`` is ours (a fast CPU victim, not from a paper); it does not flip
by default because it is also used on digits, where flips change the class.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn

from ntga.errors import UserInputError

from .densenet import DenseNet, DenseNet121
from .resnet import ResNet, ResNet18, WideResNet, WRN16_4, WRN28_10
from .simple import CNN, FNN, FNNErf, FNNReLU, SmallCNN

MIN_IMAGE_SIZE = 8  # smallest H and W every victim accepts (8x8 digits)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered victim and its default training recipe.

    Attributes:
        constructor: ``constructor(num_classes=..., **overrides) -> nn.Module``.
        loss: default loss, "ce" (softmax cross-entropy) or "mse" (on one-hot targets).
        optimizer: default optimizer, "sgd" or "adam".
        lr: default peak learning rate.
        momentum: default SGD momentum (ignored by Adam).
        weight_decay: default L2 weight decay (coupled, PyTorch-style).
        schedule: default learning-rate schedule, "cosine" or "constant".
        augment: whether random crop + horizontal flip is on by default.
        batch_norm: whether the module keeps ``batch_stats``.
        dropout: whether the module needs a ``dropout`` rng in training.
        description: one line for ``--help`` listings.
    """

    constructor: Callable[..., nn.Module]
    loss: str
    optimizer: str
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"
    augment: bool = False
    batch_norm: bool = False
    dropout: bool = False
    description: str = ""

    def build(self, num_classes: int, **overrides: Any) -> nn.Module:
        """The module for ``num_classes`` logits; ``overrides`` set module attributes (e.g. ``width``)."""
        if int(num_classes) < 2:
            raise UserInputError(f"num_classes must be >= 2, got {num_classes}")
        try:
            return self.constructor(num_classes=int(num_classes), **overrides)
        except TypeError as err:
            raise UserInputError(f"bad model override(s) {sorted(overrides)}: {err}") from None


_SGD_RECIPE = dict(loss="ce", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                   schedule="cosine", augment=True, batch_norm=True)

MODELS: dict[str, ModelSpec] = {
    "fnn": ModelSpec(FNNErf, loss="mse", optimizer="sgd", lr=1e-3,
                     description="4 x Dense512+erf, linear readout (NTGA victim; SGD 1e-3, MSE)"),
    "fnn-relu": ModelSpec(FNNReLU, loss="ce", optimizer="adam", lr=1e-3,
                          description="4 x Dense512+ReLU, linear readout (NTGA victim; Adam, CE)"),
    "cnn": ModelSpec(CNN, loss="ce", optimizer="adam", lr=1e-3, batch_norm=True, dropout=True,
                     description="2 x [Conv64 5x5-ReLU-MaxPool-BN], Dense384-Dropout-Dense192 (NTGA victim)"),
    "resnet18": ModelSpec(ResNet18, **_SGD_RECIPE,
                          description="ResNet-18, CIFAR stem (SGD 0.1 cosine, crop+flip)"),
    "densenet121": ModelSpec(DenseNet121, **_SGD_RECIPE,
                             description="DenseNet-121, growth 32, CIFAR stem (SGD 0.1 cosine, crop+flip)"),
    "wrn": ModelSpec(WRN16_4, **_SGD_RECIPE,
                     description="Wide ResNet WRN-16-4 (depth/widen overridable; SGD 0.1 cosine, crop+flip)"),
    "small-cnn": ModelSpec(SmallCNN, loss="ce", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4,
                           schedule="cosine", batch_norm=True,
                           description="fast CPU CNN: 3 x [Conv3x3-BN-ReLU-MaxPool] 32-64-128, avg-pool, dense readout"),
}


def get_model(name: str) -> ModelSpec:
    """The registered victim called ``name``.

    Raises:
        UserInputError: unknown name (the message lists the accepted ones).
    """
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise UserInputError(f"unknown model {name!r}; accepted: {', '.join(MODELS)}") from None


__all__ = [
    "MODELS", "MIN_IMAGE_SIZE", "ModelSpec", "get_model",
    "FNN", "FNNErf", "FNNReLU", "CNN", "SmallCNN",
    "ResNet", "ResNet18", "WideResNet", "WRN16_4", "WRN28_10", "DenseNet", "DenseNet121",
]
