"""The public ``kernel_fn(x1, x2, get)`` around an architecture: input checks, self mode, chunking.

Memory: the conv kernels hold same-position covariances [H', W', n1, n2] of
the first layer; for 512 x 10,000 CIFAR-10 images that is 512 * 10,000 * 256
floats (~10 GB in float64) per live array. ``chunk_size`` bounds it by
evaluating blocks of x2 one after another with ``lax.map``: the window
features of x1 are built once, and each block is wrapped in
``jax.checkpoint`` so reverse-mode differentiation recomputes a block instead
of storing every block's intermediate covariances.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from ntga.errors import UserInputError
from ntga.kernels.surrogates import Architecture, as_float

GETS = ("ntk", "nngp")


class KernelFn(Protocol):
    """``kernel_fn(x1, x2=None, get="ntk", *, chunk_size=None)`` -> [n1, n2] (or a tuple)."""

    name: str
    config: Any

    def __call__(self, x1: jax.Array, x2: jax.Array | None = None, get: str | Sequence[str] = "ntk", *,
                 chunk_size: int | None = None) -> jax.Array | tuple[jax.Array, ...]: ...


def _parse_get(get: Any) -> tuple[tuple[str, ...], bool]:
    if isinstance(get, str):
        names, as_tuple = (get,), False
    elif isinstance(get, (tuple, list)) and len(get) > 0:
        names, as_tuple = tuple(get), True
    else:
        names, as_tuple = (get,), False
    for g in names:
        if g not in GETS:
            raise UserInputError(f"get={get!r} is invalid; accepted: 'ntk', 'nngp' or a tuple of them")
    return names, as_tuple


def _check_chunk(chunk_size: Any) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise UserInputError(f"chunk_size={chunk_size!r} is invalid; expected None or an integer >= 1")
    return chunk_size


def _check_shapes(arch: Architecture, x1: jax.Array, x2: jax.Array | None) -> None:
    for what, x in (("x1", x1), ("x2", x2)):
        if x is None:
            continue
        if arch.input_ndim is not None and x.ndim != arch.input_ndim:
            raise UserInputError(
                f"{what} has shape {tuple(x.shape)}; kernel {arch.name!r} expects images [n, H, W, C]")
        if x.ndim < 2:
            raise UserInputError(f"{what} has shape {tuple(x.shape)}; expected a batch [n, ...] of examples")
    if x2 is not None and x1.shape[1:] != x2.shape[1:]:
        raise UserInputError(
            f"x1 examples have shape {tuple(x1.shape[1:])} but x2 examples have shape {tuple(x2.shape[1:])}; "
            "they must match")
    arch.check_shape(tuple(x1.shape))


def _chunked(arch: Architecture, f1: jax.Array, x2: jax.Array, names: tuple[str, ...],
             chunk: int) -> tuple[jax.Array, ...]:
    """Kernels against x2 evaluated in blocks of ``chunk`` rows (the last block may be shorter)."""
    n2 = x2.shape[0]
    n_full = n2 // chunk

    @jax.checkpoint
    def block(f1, xc):
        return arch.pair(f1, arch.features(xc), names)

    parts: list[tuple[jax.Array, ...]] = []
    if n_full:
        stacked = x2[: n_full * chunk].reshape((n_full, chunk) + x2.shape[1:])
        out = lax.map(lambda xc: block(f1, xc), stacked)  # each [n_full, n1, chunk]
        parts.append(tuple(jnp.moveaxis(o, 0, 1).reshape(o.shape[1], n_full * chunk) for o in out))
    if n2 - n_full * chunk:
        parts.append(block(f1, x2[n_full * chunk:]))
    if len(parts) == 1:
        return parts[0]
    return tuple(jnp.concatenate(cols, axis=1) for cols in zip(*parts))


def build(arch: Architecture) -> KernelFn:
    """Wraps an architecture's ``features``/``pair`` into the public kernel function."""

    def kernel_fn(x1, x2=None, get="ntk", *, chunk_size=None):
        """Infinite-width kernel between two batches.

        Args:
            x1: [n1, H, W, C] floating images in [0, 1] (fully connected kernels
                accept any [n1, ...] and flatten it).
            x2: [n2, ...] with the same example shape, or None for x1. Passing
                None (or the very same array object as x1) computes K(x1, x1) in
                self mode: its diagonal is exactly perfectly correlated, so
                gradients through it are exact.
            get: "ntk", "nngp", or a tuple of them (then a tuple is returned;
                both together cost about as much as the NTK alone).
            chunk_size: if set, x2 is processed in blocks of this many examples
                (bounds memory; results are identical up to round-off). A
                chunked self kernel is computed as a cross kernel.

        Returns:
            [n1, n2] kernel(s) in the dtype of the inputs (float32 or float64).

        Raises:
            UserInputError: for a bad ``get``/``chunk_size``, non-float inputs,
                or shapes the architecture cannot take.
        """
        names, as_tuple = _parse_get(get)
        chunk = _check_chunk(chunk_size)
        self_mode = x2 is None or x2 is x1
        x1 = as_float(x1, "x1")
        x2 = None if self_mode else as_float(x2, "x2")
        _check_shapes(arch, x1, x2)
        if x2 is not None:
            dtype = jnp.result_type(x1, x2)
            x1, x2 = x1.astype(dtype), x2.astype(dtype)

        f1 = arch.features(x1)
        n2 = x1.shape[0] if x2 is None else x2.shape[0]
        if chunk is None or n2 <= chunk:
            out = arch.pair(f1, None if x2 is None else arch.features(x2), names)
        else:
            out = _chunked(arch, f1, x1 if x2 is None else x2, names, chunk)
        return out if as_tuple else out[0]

    kernel_fn.name = arch.name  # type: ignore[attr-defined]
    kernel_fn.config = arch.config  # type: ignore[attr-defined]
    return kernel_fn  # type: ignore[return-value]
