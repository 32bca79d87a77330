"""The NTGA surrogate architectures as closed-form kernels: configs, validation, assembly.

Two reference surrogates (Yuan & Wu, ICML 2021; REFERENCE.md "Surrogates"):

* ``fnn``: depth x [Dense -> Erf], no readout after the last Erf.
* ``cnn``: depth x [Conv(5x5, stride 2, SAME) -> ReLU] -> Flatten -> 3 x Dense
  (Dense(384) -> Dense(192) -> Dense(classes); no nonlinearity after Flatten).

Both use W_std = sqrt(1.76), b_std = sqrt(0.18) (standard deviations) and the
NTK parameterisation; widths do not exist in the infinite-width limit.

Each architecture is split in two: ``features(x)`` does the per-example work
that depends on one input batch only (flattening, or cutting conv windows),
``pair(f1, f2, get)`` does everything that needs both. The chunked evaluator
computes ``features(x1)`` once and maps ``pair`` over blocks of ``x2``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ntga.errors import UserInputError
from ntga.options import check_choice, check_keys
from ntga.kernels import layers

W_STD = math.sqrt(1.76)
B_STD = math.sqrt(0.18)
ACTIVATIONS = tuple(sorted(layers.ACTIVATIONS))
PADDINGS = ("SAME", "VALID")


# --------------------------------------------------------------------------- validation


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise UserInputError(f"{name}={value!r} is invalid; expected an integer >= {minimum}")
    return int(value)


def _std(name: str, value: Any, allow_zero: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise UserInputError(f"{name}={value!r} is invalid; expected a finite standard deviation {bound}")
    return float(value)


def _choice(name: str, value: Any, accepted: tuple[str, ...]) -> str:
    canon = value.upper() if name == "padding" and isinstance(value, str) else value
    check_choice(name, value if canon not in accepted else canon, accepted)
    return canon


def _pair(name: str, value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return _positive_int(name, value[0]), _positive_int(name, value[1])
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        v = _positive_int(name, value)
        return v, v
    raise UserInputError(f"{name}={value!r} is invalid; expected a positive integer or a pair of them")


# --------------------------------------------------------------------------- configs


def _set(config, **fields) -> None:
    """Stores validated, normalised values (plain int/float/str/tuples: 2 -> (2, 2),
    "same" -> "SAME", numpy scalars -> Python) so equal configs compare equal and
    serialise to JSON."""
    for key, value in fields.items():
        object.__setattr__(config, key, value)


@dataclasses.dataclass(frozen=True)
class FnnConfig:
    """depth x [Dense -> activation] (+ an optional final Dense readout).

    Attributes:
      depth: hidden Dense layers (reference: 5).
      activation: ``erf`` (reference) or ``relu``.
      W_std: weight standard deviation (reference: sqrt(1.76)).
      b_std: bias standard deviation (reference: sqrt(0.18)); 0 for no bias.
      readout: add a final Dense layer after the last activation (the reference has none).
    """

    depth: int = 5
    activation: str = "erf"
    W_std: float = W_STD
    b_std: float = B_STD
    readout: bool = False

    def __post_init__(self):
        if not isinstance(self.readout, bool):
            raise UserInputError(f"readout={self.readout!r} is invalid; expected True or False")
        _set(self, depth=_positive_int("depth", self.depth),
             activation=_choice("activation", self.activation, ACTIVATIONS),
             W_std=_std("W_std", self.W_std, allow_zero=False),
             b_std=_std("b_std", self.b_std, allow_zero=True))


@dataclasses.dataclass(frozen=True)
class CnnConfig:
    """depth x [Conv -> activation] -> Flatten -> dense_layers x Dense.

    Attributes:
      depth: convolution layers (reference: 2).
      activation: ``relu`` (reference) or ``erf``, after each convolution.
      W_std: weight standard deviation (reference: sqrt(1.76)).
      b_std: bias standard deviation (reference: sqrt(0.18)); 0 for no bias.
      filter_size: convolution window (height, width), or one integer for both (reference: 5).
      stride: convolution stride (height, width), or one integer for both (reference: 2).
      padding: ``SAME`` (reference) or ``VALID``.
      dense_layers: Dense layers after Flatten, without nonlinearity (reference: 3).
    """

    depth: int = 2
    activation: str = "relu"
    W_std: float = W_STD
    b_std: float = B_STD
    filter_size: tuple[int, int] = (5, 5)
    stride: tuple[int, int] = (2, 2)
    padding: str = "SAME"
    dense_layers: int = 3

    def __post_init__(self):
        _set(self, depth=_positive_int("depth", self.depth),
             activation=_choice("activation", self.activation, ACTIVATIONS),
             W_std=_std("W_std", self.W_std, allow_zero=False),
             b_std=_std("b_std", self.b_std, allow_zero=True),
             filter_size=_pair("filter_size", self.filter_size),
             stride=_pair("stride", self.stride),
             padding=_choice("padding", self.padding, PADDINGS),
             dense_layers=_positive_int("dense_layers", self.dense_layers, minimum=0))


def _coerce(cls, name: str, overrides: dict[str, Any]):
    check_keys(overrides, (f.name for f in dataclasses.fields(cls)), f"kernel {name!r}")
    return cls(**overrides)


# --------------------------------------------------------------------------- assembly


def _apply_get(state: layers.KernelState, get: tuple[str, ...]) -> tuple[jax.Array, ...]:
    return tuple(state.ntk if g == "ntk" else state.nngp for g in get)


def fnn_features(cfg: FnnConfig, x: jax.Array) -> jax.Array:
    """[n, ...] -> [n, d] flattened examples."""
    return x.reshape(x.shape[0], -1)


def _ntk_filter(get: tuple[str, ...]) -> Callable[[layers.KernelState], layers.KernelState]:
    """Drops the NTK right after each weight layer when only the NNGP is asked for."""
    if "ntk" in get:
        return lambda state: state
    return lambda state: state._replace(ntk=None)


def fnn_pair(cfg: FnnConfig, f1: jax.Array, f2: jax.Array | None, get: tuple[str, ...]):
    """Kernels [n1, n2] of the fully connected network from flattened inputs."""
    act, keep = layers.ACTIVATIONS[cfg.activation], _ntk_filter(get)
    state = layers.dense_input(f1, f2)
    for _ in range(cfg.depth):
        state = act(keep(layers.dense(state, cfg.W_std, cfg.b_std)))
    if cfg.readout:
        state = keep(layers.dense(state, cfg.W_std, cfg.b_std))
    return _apply_get(state, get)


def cnn_features(cfg: CnnConfig, x: jax.Array) -> jax.Array:
    """[n, H, W, C] -> [H', W', n, fh*fw*C] zero-padded windows of the first conv layer."""
    pad = layers.conv_padding(x.shape[1:3], cfg.filter_size, cfg.stride, cfg.padding)
    return layers.patches(x, cfg.filter_size, cfg.stride, pad)


def cnn_pair(cfg: CnnConfig, f1: jax.Array, f2: jax.Array | None, get: tuple[str, ...]):
    """Kernels [n1, n2] of the conv network from first-layer windows."""
    act, keep = layers.ACTIVATIONS[cfg.activation], _ntk_filter(get)
    state = act(keep(layers.affine(layers.conv_input(f1, f2), cfg.W_std, cfg.b_std)))
    for _ in range(cfg.depth - 1):
        state = layers.conv(state, cfg.W_std, cfg.b_std, cfg.filter_size, cfg.stride, cfg.padding)
        state = act(keep(state))
    state = layers.flatten(state)
    for _ in range(cfg.dense_layers):
        state = keep(layers.dense(state, cfg.W_std, cfg.b_std))
    return _apply_get(state, get)


def cnn_check_geometry(cfg: CnnConfig, shape: tuple[int, ...]) -> None:
    """Raises UserInputError if a VALID conv stack shrinks the image below one position."""
    h, w = shape[1:3]
    for layer in range(cfg.depth):
        pad = layers.conv_padding((h, w), cfg.filter_size, cfg.stride, cfg.padding)
        h_in, w_in = h + sum(pad[0]), w + sum(pad[1])
        if h_in < cfg.filter_size[0] or w_in < cfg.filter_size[1]:
            raise UserInputError(
                f"images of shape {tuple(shape[1:])} are too small for cnn conv layer {layer + 1} "
                f"(feature map {h}x{w}, filter_size {cfg.filter_size}, padding {cfg.padding}); "
                "use padding='SAME', a smaller filter_size or a smaller depth")
        h = (h_in - cfg.filter_size[0]) // cfg.stride[0] + 1
        w = (w_in - cfg.filter_size[1]) // cfg.stride[1] + 1


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What the generic kernel_fn needs to know about one network family."""

    name: str
    config: Any
    input_ndim: int | None  # required ndim of x (None: any >= 2, flattened)
    features: Callable[[jax.Array], jax.Array]
    pair: Callable[[jax.Array, jax.Array | None, tuple[str, ...]], tuple[jax.Array, ...]]
    check_shape: Callable[[tuple[int, ...]], None]


def fnn_architecture(**overrides) -> Architecture:
    cfg = _coerce(FnnConfig, "fnn", overrides)
    return Architecture(
        name="fnn", config=cfg, input_ndim=None,
        features=lambda x: fnn_features(cfg, x),
        pair=lambda f1, f2, get: fnn_pair(cfg, f1, f2, get),
        check_shape=lambda shape: None,
    )


def cnn_architecture(**overrides) -> Architecture:
    cfg = _coerce(CnnConfig, "cnn", overrides)
    return Architecture(
        name="cnn", config=cfg, input_ndim=4,
        features=lambda x: cnn_features(cfg, x),
        pair=lambda f1, f2, get: cnn_pair(cfg, f1, f2, get),
        check_shape=lambda shape: cnn_check_geometry(cfg, shape),
    )


ARCHITECTURES: dict[str, Callable[..., Architecture]] = {
    "fnn": fnn_architecture,
    "cnn": cnn_architecture,
}


def as_float(x: Any, what: str) -> jax.Array:
    """Validates an input batch (a floating array with a batch axis) without copying it."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise UserInputError(
            f"{what} has dtype {x.dtype}; expected floating-point images in [0, 1] (e.g. x / 255.0)")
    return x


__all__ = ["ARCHITECTURES", "Architecture", "CnnConfig", "FnnConfig", "W_STD", "B_STD", "as_float"]
