"""Victim models: Flax (linen) classifiers in a plain dict registry.

``MODELS`` maps each command-line name (DESIGN.md contract 3) to a
:class:`ModelSpec` that knows how to build the module and how the victim is
trained by default (loss, optimizer recipe, augmentation), so
``ntga.train`` needs nothing but the name::

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
fast-resnet ce+LS SGD lr 0.4, Nesterov 0.85, wd 1.3e-3 linear crop+flip
======== ======= ==================================== ======== =========

``small-cnn`` is ours (a fast CPU victim, not from a paper); it does not flip
by default because it is also used on digits, where flips change the class.

``fast-resnet`` is ours too (:mod:`ntga.models.fast`), tuned for test
accuracy per CPU-second after airbench's recipe: label smoothing 0.2 (LS),
20% linear warm-up then linear decay, batch-norm biases at 64x the learning
rate, a frozen patch-whitening first layer fitted to the training images,
flip test-time augmentation. Its flips (training and test) also apply to
digits and MNIST, where they cost a little accuracy; pass ``--no-augment
--tta none`` there for the unflipped recipe.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import typing
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from ntga.errors import UserInputError
from ntga.options import OptionField, lookup, option_fields

from . import fast
from .densenet import DenseNet, DenseNet121
from .resnet import ResNet, ResNet18, WideResNet, WRN16_4, WRN28_10
from .simple import CNN, FNN, FNNErf, FNNReLU, SmallCNN

MIN_IMAGE_SIZE = 8  # smallest H and W every victim accepts (8x8 digits)
# Compute dtypes a victim's ``dtype`` option accepts, by command-line name.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


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
        nesterov: default Nesterov momentum for SGD.
        label_smoothing: default label smoothing (share of the target mass spread evenly).
        warmup: default share of the steps spent warming the learning rate up linearly from 0.
        norm_bias_lr_scale: learning-rate multiplier for the parameters ``is_norm_bias`` marks
            (weight decay stays the same in absolute terms).
        tta: default test-time augmentation, "none" or "flip".
        is_frozen: ``is_frozen(path) -> bool`` for parameters (path = tuple of names) that the
            trainer never updates.
        is_norm_bias: ``is_norm_bias(path) -> bool`` for the parameters ``norm_bias_lr_scale`` scales.
        data_init: ``data_init(variables, x) -> variables``, called once after init with the
            standardised training images [N, H, W, C] (e.g. a whitening layer fitted to them).
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
    nesterov: bool = False
    label_smoothing: float = 0.0
    warmup: float = 0.0
    norm_bias_lr_scale: float = 1.0
    tta: str = "none"
    is_frozen: Callable[[tuple[str, ...]], bool] | None = None
    is_norm_bias: Callable[[tuple[str, ...]], bool] | None = None
    data_init: Callable[[Any, Any], Any] | None = None

    @property
    def needs_victim_trainer(self) -> bool:
        """Whether the recipe has parts only ``ntga.train`` applies (data-dependent init, parameter groups)."""
        return self.data_init is not None or self.is_frozen is not None or self.is_norm_bias is not None

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
    "fast-resnet": ModelSpec(fast.FastResNet, loss="ce", optimizer="sgd", lr=0.4, momentum=0.85, nesterov=True,
                             weight_decay=1.3e-3, schedule="linear", warmup=0.2, label_smoothing=0.2,
                             augment=True, batch_norm=True, norm_bias_lr_scale=64.0, tta="flip",
                             is_frozen=fast.is_frozen, is_norm_bias=fast.is_norm_bias,
                             data_init=fast.whitening_init,
                             description="ours, tuned for accuracy per CPU-second: frozen patch whitening, "
                             "3 residual stages 32-64-128, Nesterov SGD, label smoothing, flip TTA"),
}


def get_model(name: str) -> ModelSpec:
    """The registered victim called ``name``.

    Raises:
        UserInputError: unknown name (the message lists the accepted ones).
    """
    return lookup(MODELS, name, "model")


def model_options(spec: ModelSpec) -> dict[str, OptionField]:
    """The module attributes a victim takes from the command line (``--model NAME@key=value``).

    Read from the Flax module's dataclass fields, with the registry's presets as defaults;
    ``dtype`` takes one of :data:`DTYPES` by name. Functions (activations, layer classes)
    and Flax's own ``parent``/``name`` are not command-line options.
    """
    fields = option_fields(spec.constructor, exclude=("num_classes", "parent", "name"))
    table = {}
    for key, f in fields.items():
        if key == "dtype":
            f = OptionField(typing.Literal[tuple(DTYPES)], f.default.__name__ if hasattr(f.default, "__name__")
                            else f.default)
        elif typing.get_origin(f.annotation) is collections.abc.Callable or f.annotation is typing.Callable:
            continue
        table[key] = f
    return table


__all__ = [
    "DTYPES", "MODELS", "MIN_IMAGE_SIZE", "ModelSpec", "get_model", "model_options",
    "FNN", "FNNErf", "FNNReLU", "CNN", "SmallCNN",
    "ResNet", "ResNet18", "WideResNet", "WRN16_4", "WRN28_10", "DenseNet", "DenseNet121",
]
