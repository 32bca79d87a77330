"""NTGA on one block: projected gradient ascent on the NTK-GP's loss on a target set.

For a block of training images ``x`` with labels ``y`` the surrogate is the
NTK-GP mean at time ``t`` (:mod:`ntga.gp`); the attack ascends

    L(x) = sum_targets w_i * CE(softmax(K(x_target, x) @ alpha(x)), y_target),
    alpha(x) = K~(x, x)^-1 (I - exp(-K~(x, x) t / (n k))) y

(Yuan & Wu, "Neural Tangent Generalization Attacks", ICML 2021). The
reference recomputes ``K(x, x)`` and its ``eigh`` for every chunk of 30
targets; here one step computes them once and takes one exact gradient over
the whole target set:

1. ``alpha, vjp = jax.vjp(alpha_fn, x)`` -- kernel of the block and one ``eigh``.
2. A ``lax.scan`` over target chunks (the last padded with zero-weight rows so
   shapes are static) accumulates ``dL/dalpha`` and the gradient through
   ``K(x_target_chunk, x)``; memory is bounded by the chunk, not the target set.
3. ``dL/dalpha`` is pulled back through ``alpha(x)`` once with ``vjp``.

Everything is a pure function of arrays, so a caller can ``jit`` it, ``vmap``
it over blocks or ``shard_map`` it over devices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ntga.attack.config import AttackConfig
from ntga.errors import UserInputError
from ntga.gp import gp_mean_coefficients
from ntga.pixels import ascent_step, project, quantize_to_budget, random_start, to_float

__all__ = [
    "BlockResult",
    "chunk_targets",
    "evaluate_block",
    "make_block_attack",
    "make_evaluate",
    "make_pgd_step",
    "poison_block",
    "target_loss",
    "target_loss_and_grad",
]

KernelFn = Callable[..., jax.Array]
Chunks = tuple[jax.Array, jax.Array, jax.Array]


# --------------------------------------------------------------------------- pieces


def _cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    """[m, k] logits and one-hot rows -> [m] cross-entropies."""
    return -jnp.sum(y * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def _self_kernel(kernel_fn: KernelFn, x: jax.Array) -> jax.Array:
    # The very same array twice: kernels that detect ``x2 is x1`` (ntga.kernels) then use
    # self mode, whose exactly-correlated diagonal keeps gradients finite.
    return kernel_fn(x, x, get="ntk")


def _alpha(kernel_fn: KernelFn, config: AttackConfig, x: jax.Array, y_block: jax.Array) -> jax.Array:
    """[n, k] GP coefficients of the block ``x`` [n, H, W, C]."""
    return gp_mean_coefficients(_self_kernel(kernel_fn, x), y_block, config.t, config.diag_reg)


def chunk_targets(x_target: jax.Array, y_target: jax.Array, chunk: int,
                  target_weights: jax.Array | None = None) -> Chunks:
    """Splits the target set into equal chunks, padding the last with zero-weight rows.

    Shapes are static (known at trace time), so this is free of data-dependent control flow.

    Args:
      x_target: [m, H, W, C] target images.
      y_target: [m, k] one-hot labels.
      chunk: rows per chunk (at most m are used: a small target set is one chunk).
      target_weights: [m] per-target loss weights, default ones.

    Returns:
      (x [c, chunk', H, W, C], y [c, chunk', k], w [c, chunk']) with
      ``chunk' = min(chunk, m)`` and ``c = ceil(m / chunk')``.
    """
    m = x_target.shape[0]
    size = max(1, min(chunk, m))
    num = -(-m // size)
    pad = num * size - m
    if target_weights is None:
        target_weights = jnp.ones((m,), dtype=x_target.dtype)
    target_weights = jnp.asarray(target_weights, dtype=x_target.dtype)

    def split(a):
        if pad:
            a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)], axis=0)
        return a.reshape((num, size) + a.shape[1:])

    return split(x_target), split(y_target.astype(x_target.dtype)), split(target_weights)


def target_loss(kernel_fn: KernelFn, config: AttackConfig, x: jax.Array, y_block: jax.Array,
                x_target: jax.Array, y_target: jax.Array, target_weights: jax.Array | None = None) -> jax.Array:
    """The attack's objective in one piece (no chunking): summed weighted target cross-entropy.

    Memory grows with the target set; the attack itself uses :func:`target_loss_and_grad`.
    Useful as the plain definition in tests and for small problems.

    Args:
      kernel_fn: ``kernel_fn(x1, x2, get="ntk") -> [n1, n2]``.
      config: attack settings (``t``, ``diag_reg``).
      x: [n, H, W, C] block images.
      y_block: [n, k] one-hot block labels.
      x_target: [m, H, W, C] target images.
      y_target: [m, k] one-hot target labels.
      target_weights: [m] weights, default ones.

    Returns:
      Scalar loss ``sum_i w_i CE(f(x_target_i), y_target_i)``.
    """
    y_block = y_block.astype(x.dtype)
    alpha = _alpha(kernel_fn, config, x, y_block)
    logits = kernel_fn(x_target, x, get="ntk") @ alpha
    ce = _cross_entropy(logits, y_target.astype(logits.dtype))
    if target_weights is None:
        return jnp.sum(ce)
    return jnp.sum(jnp.asarray(target_weights, ce.dtype) * ce)


def _loss_and_grad_chunked(kernel_fn: KernelFn, config: AttackConfig, x: jax.Array, y_block: jax.Array,
                           chunks: Chunks) -> tuple[jax.Array, jax.Array]:
    """Exact (loss, dL/dx) over pre-chunked targets: one kernel + eigh of the block."""
    y_block = y_block.astype(x.dtype)
    alpha, alpha_vjp = jax.vjp(lambda xb: _alpha(kernel_fn, config, xb, y_block), x)

    def chunk_loss(a, xb, xt, yt, wt):
        logits = kernel_fn(xt, xb, get="ntk") @ a
        return jnp.sum(wt * _cross_entropy(logits, yt))

    def body(carry, chunk):
        g_alpha, g_x, total = carry
        loss, (ga, gx) = jax.value_and_grad(chunk_loss, argnums=(0, 1))(alpha, x, *chunk)
        return (g_alpha + ga, g_x + gx, total + loss), None

    init = (jnp.zeros_like(alpha), jnp.zeros_like(x), jnp.zeros((), x.dtype))
    (g_alpha, g_x, total), _ = lax.scan(body, init, chunks)
    (g_through_alpha,) = alpha_vjp(g_alpha)
    return total, g_x + g_through_alpha


def target_loss_and_grad(kernel_fn: KernelFn, config: AttackConfig, x: jax.Array, y_block: jax.Array,
                         x_target: jax.Array, y_target: jax.Array,
                         target_weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """:func:`target_loss` and its gradient w.r.t. ``x``, chunked over targets (exact).

    Returns:
      (scalar loss, [n, H, W, C] gradient).
    """
    chunks = chunk_targets(x_target, y_target, config.target_chunk, target_weights)
    return _loss_and_grad_chunked(kernel_fn, config, x, y_block, chunks)


def _pgd_update(config: AttackConfig, x_adv: jax.Array, grad: jax.Array, x_block: jax.Array) -> jax.Array:
    """One ascent step followed by projection onto the eps-ball and [0, 1]."""
    x_new = x_adv + ascent_step(grad, config.step_size, config.norm)
    return project(x_new, x_block, config.eps, config.norm).astype(x_adv.dtype)


def _evaluate_chunked(kernel_fn: KernelFn, config: AttackConfig, x: jax.Array, y_block: jax.Array,
                      chunks: Chunks) -> tuple[jax.Array, jax.Array]:
    """(summed weighted target loss, weighted accuracy) of the GP trained on ``x``."""
    alpha = _alpha(kernel_fn, config, x, y_block.astype(x.dtype))

    def per_chunk(chunk):
        xt, yt, wt = chunk
        logits = kernel_fn(xt, x, get="ntk") @ alpha
        correct = (jnp.argmax(logits, axis=-1) == jnp.argmax(yt, axis=-1)).astype(wt.dtype)
        return jnp.sum(wt * _cross_entropy(logits, yt)), jnp.sum(wt * correct)

    losses, corrects = lax.map(per_chunk, chunks)
    return jnp.sum(losses), jnp.sum(corrects) / jnp.sum(chunks[2])


# --------------------------------------------------------------------------- factories


def _cached(builder):
    """Caches a factory per (kernel_fn, config) so each jit compiles once per input shape."""
    cached = functools.lru_cache(maxsize=32)(builder)

    @functools.wraps(builder)
    def get(kernel_fn, config):
        try:
            return cached(kernel_fn, config)
        except TypeError:  # an unhashable kernel_fn: build afresh (still correct, compiles again)
            return builder(kernel_fn, config)

    return get


@_cached
def make_pgd_step(kernel_fn: KernelFn, config: AttackConfig) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """Builds the jitted PGD step (one per (kernel_fn, config); compiled once per shape).

    Args:
      kernel_fn: ``kernel_fn(x1, x2, get="ntk") -> [n1, n2]``, differentiable and jittable.
      config: attack settings.

    Returns:
      ``step(x_adv, x_block, y_block, x_target, y_target, target_weights) -> (x_next, loss)``:
      x_adv, x_block [n, H, W, C]; y_block [n, k]; x_target [m, H, W, C]; y_target [m, k];
      target_weights [m] (zero for padding rows a caller added); ``loss`` is the target
      loss at ``x_adv`` (before the step). Pure: vmap/shard_map it over blocks freely.
    """

    @jax.jit
    def step(x_adv, x_block, y_block, x_target, y_target, target_weights):
        chunks = chunk_targets(x_target, y_target, config.target_chunk, target_weights)
        loss, grad = _loss_and_grad_chunked(kernel_fn, config, x_adv, y_block, chunks)
        return _pgd_update(config, x_adv, grad, x_block), loss

    return step


@_cached
def make_evaluate(kernel_fn: KernelFn, config: AttackConfig) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """Jitted ``evaluate(x_block, y_block, x_target, y_target, target_weights) -> (loss, acc)``."""

    @jax.jit
    def evaluate(x_block, y_block, x_target, y_target, target_weights):
        chunks = chunk_targets(x_target, y_target, config.target_chunk, target_weights)
        return _evaluate_chunked(kernel_fn, config, x_block, y_block, chunks)

    return evaluate


def evaluate_block(kernel_fn: KernelFn, config: AttackConfig, x_block: jax.Array, y_block: jax.Array,
                   x_target: jax.Array, y_target: jax.Array,
                   target_weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """GP trained on one block, scored on the target set (chunked, jitted).

    Args:
      kernel_fn: ``kernel_fn(x1, x2, get="ntk") -> [n1, n2]``.
      config: attack settings (``t``, ``diag_reg``, ``target_chunk``).
      x_block: [n, H, W, C] floats in [0, 1].
      y_block: [n, k] one-hot labels.
      x_target: [m, H, W, C] target images.
      y_target: [m, k] one-hot labels.
      target_weights: [m] weights (default ones); accuracy is the weighted mean.

    Returns:
      (summed weighted target cross-entropy, target accuracy in [0, 1]) as scalars.
    """
    x_block = jnp.asarray(x_block)
    x_target = jnp.asarray(x_target, x_block.dtype)
    if target_weights is None:
        target_weights = jnp.ones((x_target.shape[0],), x_block.dtype)
    return make_evaluate(kernel_fn, config)(x_block, jnp.asarray(y_block, x_block.dtype), x_target,
                                            jnp.asarray(y_target, x_block.dtype), target_weights)


def make_block_attack(kernel_fn: KernelFn, config: AttackConfig) -> Callable[..., dict[str, jax.Array]]:
    """The whole attack on one block as one pure function (not jitted: jit/vmap/shard_map it).

    The steps run in a ``lax.scan``, so compiling costs the same as one step.

    Returns:
      ``attack(x_block, y_block, x_target, y_target, key) -> dict`` with
      ``x_poison_uint8`` [n, H, W, C] uint8 (within budget after rounding),
      ``clean_target_acc`` and ``poisoned_target_acc`` (scalars; the latter after
      rounding) and ``loss_history`` [steps + 1]: the target loss at each iterate
      x_0 .. x_{steps-1} and, last, at the rounded poison. ``key`` is used only
      with ``random_start`` (pass any key otherwise).
    """

    def attack(x_block, y_block, x_target, y_target, key):
        dtype = x_block.dtype
        y_block = y_block.astype(dtype)
        chunks = chunk_targets(x_target.astype(dtype), y_target.astype(dtype), config.target_chunk)
        if config.random_start:
            x0 = random_start(key, x_block, config.eps, config.norm)
        else:
            x0 = x_block

        def body(x_adv, _):
            loss, grad = _loss_and_grad_chunked(kernel_fn, config, x_adv, y_block, chunks)
            return _pgd_update(config, x_adv, grad, x_block), loss

        x_final, losses = lax.scan(body, x0, None, length=config.steps)
        x_uint8 = quantize_to_budget(x_final, x_block, config.eps, config.norm)
        _, clean_acc = _evaluate_chunked(kernel_fn, config, x_block, y_block, chunks)
        final_loss, poisoned_acc = _evaluate_chunked(kernel_fn, config, to_float(x_uint8, dtype), y_block, chunks)
        return {
            "x_poison_uint8": x_uint8,
            "clean_target_acc": clean_acc,
            "poisoned_target_acc": poisoned_acc,
            "loss_history": jnp.concatenate([losses, final_loss[None]]),
        }

    return attack


_jitted_block_attack = _cached(lambda kernel_fn, config: jax.jit(make_block_attack(kernel_fn, config)))


# --------------------------------------------------------------------------- one block, host side


@dataclass(frozen=True, eq=False)
class BlockResult:
    """What :func:`poison_block` returns (numpy, on the host).

    Attributes:
      x_poison_uint8: [n, H, W, C] uint8 poisoned block, within the budget of the
        clean block as stored (``to_uint8(x_block)``).
      clean_target_acc: GP accuracy on the target set when trained on the clean block.
      poisoned_target_acc: the same with the poisoned block (after uint8 rounding).
      loss_history: [steps + 1] target loss at x_0 .. x_{steps-1} and at the rounded
        poison; an increase is the attack's own health check.
    """

    x_poison_uint8: np.ndarray
    clean_target_acc: float
    poisoned_target_acc: float
    loss_history: np.ndarray


def _check_arrays(x_block: Any, y_block: Any, x_target: Any, y_target: Any) -> None:
    named = {"x_block": x_block, "y_block": y_block, "x_target": x_target, "y_target": y_target}
    for name in ("x_block", "x_target"):
        x = named[name]
        if x.ndim != 4:
            raise UserInputError(f"{name} has shape {tuple(x.shape)}; expected images [n, H, W, C]")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise UserInputError(f"{name} has dtype {x.dtype}; expected floats in [0, 1] "
                                 "(convert uint8 with ntga.pixels.to_float)")
        lo, hi = float(jnp.min(x)), float(jnp.max(x))
        if lo < 0 or hi > 1:
            raise UserInputError(f"{name} has values in [{lo:g}, {hi:g}]; expected pixels in [0, 1]")
    if x_block.shape[1:] != x_target.shape[1:]:
        raise UserInputError(f"x_block images have shape {tuple(x_block.shape[1:])} but x_target images have "
                             f"shape {tuple(x_target.shape[1:])}; they must match")
    for (xn, yn) in (("x_block", "y_block"), ("x_target", "y_target")):
        x, y = named[xn], named[yn]
        if y.ndim != 2 or y.shape[0] != x.shape[0]:
            raise UserInputError(f"{yn} has shape {tuple(y.shape)}; expected one-hot labels [{x.shape[0]}, k]")
    if y_block.shape[1] != y_target.shape[1]:
        raise UserInputError(f"y_block has {y_block.shape[1]} classes but y_target has {y_target.shape[1]}; "
                             "they must match")


def poison_block(kernel_fn: KernelFn, x_block: Any, y_block: Any, x_target: Any, y_target: Any,
                 config: AttackConfig, key: jax.Array | None = None) -> BlockResult:
    """Runs NTGA (real multi-step PGD) on one block and rounds the result to uint8.

    Each step: one kernel + eigh of the block, one exact gradient of the summed
    target cross-entropy over the whole target set (chunked), an ascent step
    (sign for L-inf, normalised gradient for L2), projection onto the eps-ball
    around ``x_block`` and clipping to [0, 1]. The jitted attack is cached per
    (kernel_fn, config) and compiles once per shape, so looping over blocks is cheap.

    Args:
      kernel_fn: ``kernel_fn(x1, x2, get="ntk") -> [n1, n2]`` (e.g. ``ntga.kernels.make("fnn")``).
      x_block: [n, H, W, C] floats in [0, 1] (float64 for the reference's precision).
      y_block: [n, k] one-hot labels.
      x_target: [m, H, W, C] held-out target images, floats in [0, 1].
      y_target: [m, k] one-hot true labels.
      config: attack settings.
      key: PRNG key; required when ``config.random_start``.

    Returns:
      :class:`BlockResult`.

    Raises:
      UserInputError: bad shapes, non-float or out-of-range pixels, or a missing key.
    """
    x_block = jnp.asarray(x_block)
    dtype = x_block.dtype
    x_target, y_block, y_target = (jnp.asarray(a) for a in (x_target, y_block, y_target))
    _check_arrays(x_block, y_block, x_target, y_target)
    if key is None:
        if config.random_start:
            raise UserInputError("random_start=True needs a PRNG key (pass key=jax.random.key(seed))")
        key = jax.random.key(0)  # unused without random_start
    out = _jitted_block_attack(kernel_fn, config)(x_block, y_block.astype(dtype), x_target.astype(dtype),
                                                  y_target.astype(dtype), key)
    return BlockResult(
        x_poison_uint8=np.asarray(out["x_poison_uint8"]),
        clean_target_acc=float(out["clean_target_acc"]),
        poisoned_target_acc=float(out["poisoned_target_acc"]),
        loss_history=np.asarray(out["loss_history"]),
    )
