"""The trainer core every training loop shares: the training state, its init, and the epoch order.

The victim loop (:mod:`ntga.train.loop`), the methods' surrogates
(:mod:`ntga.methods.surrogate`: EM, BEO features) and SEP's checkpointed run
(:mod:`ntga.methods.sep_surrogate`) all train through these pieces and the one
jitted update of :func:`ntga.train.step.make_train_step`, so a network starts,
orders its batches and updates the same way whoever trains it.

The state is a dict: ``params``, ``batch_stats`` (empty without batch norm),
``opt_state`` (the optax state) and ``step`` (int32 scalar, the update count).

:func:`per_example_losses` is the one way a trained network's loss on every image of a set
is measured (the detectors' suspect model, the radioactive black-box test).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

State = dict[str, Any]

# Init runs once per run: XLA's backend optimisations would cost seconds of compilation
# per layer (a threefry sampler per parameter) for nothing.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def init_variables(module, image_shape: tuple[int, ...], key: jax.Array) -> dict[str, Any]:
    """Fresh Flax variables of ``module`` for images of shape ``(H, W, C)`` (pure; jit it).

    The same key seeds the parameters and the init-time dropout stream, as everywhere
    in the project.
    """
    x0 = jnp.zeros((1, *image_shape), jnp.float32)
    return module.init({"params": key, "dropout": key}, x0, train=False)


def init_state(module, tx, image_shape: tuple[int, ...], key: jax.Array, *,
               data_init: Callable[[Any, np.ndarray], Any] | None = None, x_init: np.ndarray | None = None) -> State:
    """A fresh training state (pure; jit it with :data:`INIT_COMPILER_OPTIONS`).

    Args:
        module: the Flax module.
        tx: its optax transformation.
        image_shape: ``(H, W, C)``.
        key: PRNG key of the parameters.
        data_init: ``data_init(variables, x_init) -> variables``, a data-dependent init
            (fast-resnet's whitening layer); ``x_init`` are the images it sees (numpy, so
            the same constants for every seed).
    """
    variables = init_variables(module, image_shape, key)
    if data_init is not None:
        variables = data_init(variables, x_init)
    params = variables["params"]
    return dict(params=params, batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                step=jnp.zeros((), jnp.int32))


def epoch_order(key: jax.Array, epoch, n: int, batch: int) -> jax.Array:
    """[n // batch, batch] row indices of one epoch's shuffled batches (pure; ``n``, ``batch`` static).

    Epoch ``e`` permutes with ``fold_in(key, e)`` and drops the last partial batch, so
    every step has one static shape and one compilation.
    """
    steps = n // batch
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)[:steps * batch].reshape(steps, batch)


def per_example_losses(loss_fn: Callable[[jax.Array, jax.Array], jax.Array], x: Any, y: Any,
                       batch_size: int = 512) -> np.ndarray:
    """float64 [N] per-example losses, measured in fixed-size batches (one compilation).

    Args:
        loss_fn: ``loss_fn(x [B, ...], y [B]) -> [B]``; jit it at the call site (with the weights as
            arguments of the jitted function, so a new state does not recompile). Its inputs are
            rows of ``x`` and ``y`` as given (uint8 or float images).
        x: [N, ...] images (numpy or jax).
        y: [N] int labels.
        batch_size: rows per call; the last batch is padded by repeating row N-1 and the padding
            is dropped from the result.
    """
    n = int(len(x))
    if n == 0:
        return np.zeros(0)
    bsz = max(1, min(int(batch_size), n))
    x, y = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    rows = np.minimum(np.arange(-(-n // bsz) * bsz), n - 1).reshape(-1, bsz)
    parts = [np.asarray(loss_fn(x[r], y[r])) for r in jnp.asarray(rows)]
    return np.concatenate(parts)[:n].astype(np.float64)
