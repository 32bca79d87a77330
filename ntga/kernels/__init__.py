"""Closed-form infinite-width NNGP and NTK kernels of the NTGA surrogates, in plain JAX.

Usage::

    from ntga import kernels
    kernel_fn = kernels.make("cnn")                 # the reference CNN surrogate
    k = kernel_fn(x_train, x_target, get="ntk")     # [n_train, n_target]
    k = kernel_fn(x_train, x_big, chunk_size=256)   # blocks of x2 for big n2
    relu_fnn = kernels.make("fnn", activation="relu", depth=4)

Names (``KERNELS``): ``fnn`` (5 x [Dense -> Erf], no readout) and ``cnn``
(2 x [Conv 5x5 stride 2 SAME -> ReLU] -> Flatten -> 3 x Dense), both with
W_std = sqrt(1.76), b_std = sqrt(0.18) in the NTK parameterisation, as in the
reference NTGA implementation. Values agree with neural-tangents 0.6.5 to
< 1e-6 relative error in float64 (tests/test_kernels_parity.py), but
neural-tangents is not used here.

Overrides: fnn: depth, activation ("erf" | "relu"), W_std, b_std, readout;
cnn: depth, activation, W_std, b_std, filter_size, stride, padding
("SAME" | "VALID"), dense_layers.
"""

from __future__ import annotations

from typing import Callable

from ntga.kernels.kernel_fn import GETS, KernelFn, build
from ntga.kernels.surrogates import ARCHITECTURES, B_STD, W_STD, CnnConfig, FnnConfig
from ntga.options import OptionField, lookup, option_fields


def fnn(**overrides) -> KernelFn:
    """The FNN surrogate: depth x [Dense -> activation]; see :class:`FnnConfig` for overrides."""
    return build(ARCHITECTURES["fnn"](**overrides))


def cnn(**overrides) -> KernelFn:
    """The CNN surrogate: depth x [Conv -> activation] -> Flatten -> Dense...; see :class:`CnnConfig`."""
    return build(ARCHITECTURES["cnn"](**overrides))


KERNELS: dict[str, Callable[..., KernelFn]] = {"fnn": fnn, "cnn": cnn}
CONFIGS: dict[str, type] = {"fnn": FnnConfig, "cnn": CnnConfig}


def kernel_options(name: str) -> dict[str, OptionField]:
    """The overrides kernel ``name`` takes, typed for the command line (``--kernel cnn@depth=3``).

    From the kernel's config dataclass; the (height, width) pairs ``filter_size`` and
    ``stride`` also take one integer for both, as :func:`make` does (``stride=2``).
    """
    table = option_fields(lookup(CONFIGS, name, "kernel"))
    for key, f in table.items():
        if f.annotation == tuple[int, int]:
            table[key] = f._replace(annotation=int | tuple[int, int])
    return table


def make(name: str, **overrides) -> KernelFn:
    """Builds a kernel function by registry name.

    Args:
        name: a key of :data:`KERNELS` ("fnn" or "cnn").
        **overrides: architecture fields to change (see the module docstring).

    Returns:
        ``kernel_fn(x1, x2=None, get="ntk", *, chunk_size=None)``; it carries
        ``.name`` and ``.config`` (a frozen dataclass, e.g. for manifests).

    Raises:
        UserInputError: unknown name, unknown override, or a bad value.
    """
    return lookup(KERNELS, name, "kernel")(**overrides)


__all__ = ["B_STD", "CONFIGS", "GETS", "KERNELS", "CnnConfig", "FnnConfig", "KernelFn", "W_STD", "cnn", "fnn",
           "kernel_options", "make"]
