"""A surrogate network for protection methods that train one (em, sep, ...).

Builds a registered victim (``ntga.models``) and trains it exactly as
``ntga.train`` would (the trainer core's init, the same jitted update, loss,
optimizer recipe, coupled weight decay, per-channel standardisation inside the
network's input), but on float images
in [0, 1] that the caller hands over batch by batch, because these methods
change the images while the network trains::

    sur = make_surrogate("small-cnn", num_classes=10, overrides={"width": 16})
    state = sur.init(key, (28, 28, 1), mean, std)       # mean, std: [C] of the clean images
    state, (loss_sum, correct) = sur.train_step(state, x_batch, y_batch, step_key)
    g = sur.input_grad(state, x_batch, y_batch, mask)     # d sum(loss) / d x, [B, H, W, C]
    acc = accuracy(sur, state, x_all, y_all, batch_size=256)

Differences from ``ntga.train``: the schedule is constant unless a total
number of steps is given (these loops do not know their length in advance),
there is no augmentation (the perturbation must stay aligned with its image),
and ``mean``/``std`` are fixed by the caller at ``init`` (typically the clean
images' statistics) so the network's input convention does not drift while the
perturbation changes.

The state is the dict ``ntga.train.make_train_step`` uses (``params``,
``batch_stats``, ``opt_state``, ``step``) plus ``mean``/``std``; ``ntga.methods.tree_io``
saves and restores it for resumable runs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ntga.models import get_model
from ntga.train import LOSSES, TrainConfig, make_optimizer, make_train_step
from ntga.train import inputs
from ntga.train.core import INIT_COMPILER_OPTIONS, init_state
from ntga.errors import UserInputError

State = dict[str, Any]


class Surrogate(NamedTuple):
    """Pure, jitted functions of one surrogate network; ``state`` is its training-state dict.

    The state holds ``params``, ``batch_stats``, ``opt_state``, ``step`` (as in
    ``ntga.train``) and the standardisation ``mean``/``std`` [C], so the
    functions close over nothing data-dependent and one surrogate (and its
    compilations) serves every data set of the same image shape.

    Attributes:
      name: the victim's registry name.
      num_classes: K.
      config: the resolved training recipe (``ntga.train.TrainConfig``).
      init: ``init(key, image_shape (H, W, C), mean [C], std [C]) -> state``;
        ``mean``/``std`` are per-channel statistics of images in [0, 1].
      train_step: ``train_step(state, x [B,H,W,C] float in [0,1], y int [B], key)
        -> (state, (loss_sum, correct))``; one optimizer update in training mode.
        The input state is donated (do not reuse it).
      losses: ``losses(state, x, y, train=False) -> [B]`` per-example loss
        (``train`` static: batch statistics of ``x`` instead of running averages).
      input_grad: ``input_grad(state, x, y, mask [B] bool, train=False) -> [B,H,W,C]``,
        the gradient of the masked sum of losses w.r.t. the images (masked rows give zeros).
      count_correct: ``count_correct(state, x, y, mask) -> int`` correct predictions
        among masked-in rows (running averages, no dropout).
    """

    name: str
    num_classes: int
    config: TrainConfig
    init: Callable[..., State]
    train_step: Callable[..., tuple[State, tuple[jax.Array, jax.Array]]]
    losses: Callable[..., jax.Array]
    input_grad: Callable[..., jax.Array]
    count_correct: Callable[..., jax.Array]


def make_surrogate(name: str, num_classes: int, *, overrides: Mapping[str, Any] | None = None,
                   lr: float | None = None, total_steps: int | None = None, batch_size: int = 128) -> Surrogate:
    """Builds the registered victim ``name`` as a surrogate with its default recipe.

    Identical arguments return the same :class:`Surrogate` (memoised), so
    repeated runs reuse its compiled functions.

    Args:
      name: a key of ``ntga.models.MODELS`` (e.g. "small-cnn", "resnet18").
      num_classes: K >= 2.
      overrides: module attributes, e.g. ``{"width": 16}`` (hashable values).
      lr: peak learning rate (None: the model's default).
      total_steps: length of a cosine schedule when the model's recipe has one;
        None trains at a constant learning rate.
      batch_size: recorded in ``config`` only (the caller chooses batches).

    Raises:
      UserInputError: unknown model name or bad overrides.
    """
    return _build(name, int(num_classes), tuple(sorted(dict(overrides or {}).items())), lr, total_steps,
                  int(batch_size))


def refuse_victim_only(name: str, spec) -> None:
    """Surrogates train with the methods' own loops, which do not yet apply a victim-only recipe."""
    if spec.needs_victim_trainer:
        raise UserInputError(f"{name} cannot be a surrogate yet: its recipe (a whitening layer fitted to the "
                             "training data, frozen parameters, per-group learning rates) is applied only by the "
                             "victim trainer; choose another surrogate, e.g. small-cnn or resnet18")


@functools.lru_cache(maxsize=16)
def _build(name, num_classes, overrides, lr, total_steps, batch_size) -> Surrogate:
    spec = get_model(name)
    refuse_victim_only(name, spec)
    module = spec.build(num_classes, **dict(overrides))
    schedule = "constant" if total_steps is None else None
    cfg = TrainConfig(batch_size=batch_size, lr=lr, schedule=schedule, augment=False).resolved(spec)
    tx = make_optimizer(cfg, total_steps or 1)
    loss_of = LOSSES[cfg.loss]
    # The inner step gets standardised images (standardize=False), so mean/std can live in the state.
    step = make_train_step(module, spec, dataclasses.replace(cfg, standardize=False), tx, num_classes, None, None)
    inner_keys = ("params", "batch_stats", "opt_state", "step")

    def standardize(state, x):
        return inputs.standardize(x.astype(jnp.float32), state["mean"], state["std"])

    # Runs once per shape: backend optimisation would only add compile time.
    @functools.partial(jax.jit, static_argnums=1, compiler_options=INIT_COMPILER_OPTIONS)
    def init_params(key, image_shape):
        return init_state(module, tx, image_shape, key)

    def init(key, image_shape, mean, std):
        try:
            state = init_params(key, tuple(int(d) for d in image_shape))
        except (TypeError, ValueError) as err:
            raise UserInputError(f"surrogate {name} cannot take images of shape {tuple(image_shape)}: {err}") from None
        return {**state, "mean": jnp.asarray(mean, jnp.float32).reshape(-1),
                "std": jnp.asarray(std, jnp.float32).reshape(-1)}

    def train_step(state, x, y, key):
        inner = {k: state[k] for k in inner_keys}
        inner, metrics = step(inner, standardize(state, x), y, jnp.arange(x.shape[0]), key)
        return {**inner, "mean": state["mean"], "std": state["std"]}, metrics

    def logits(state, x, train):
        variables = {"params": state["params"], **({"batch_stats": state["batch_stats"]} if spec.batch_norm else {})}
        x = standardize(state, x)
        if train and spec.batch_norm:
            # Batch statistics of x; the running averages are left as they are.
            out, _ = module.apply(variables, x, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.key(0)})
        else:
            out = module.apply(variables, x, train=False)
        return out.astype(jnp.float32)

    def losses(state, x, y, train=False):
        return loss_of(logits(state, x, train), jax.nn.one_hot(y, num_classes, dtype=jnp.float32))

    def input_grad(state, x, y, mask, train=False):
        return jax.grad(lambda xi: jnp.sum(jnp.where(mask, losses(state, xi, y, train), 0.0)))(x)

    def count_correct(state, x, y, mask):
        return jnp.sum((jnp.argmax(logits(state, x, False), -1) == y) & mask)

    return Surrogate(name=name, num_classes=num_classes, config=cfg, init=init,
                     train_step=jax.jit(train_step, donate_argnums=0),
                     losses=jax.jit(losses, static_argnames="train"),
                     input_grad=jax.jit(input_grad, static_argnames="train"),
                     count_correct=jax.jit(count_correct))


def padded_batches(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices covering ``range(n)`` in fixed-size batches, for one compilation.

    Returns:
      idx int32 [num_batches, batch_size] (padding repeats row n-1, a valid gather)
      and valid bool [num_batches, batch_size] (False on padding).
    """
    if n < 1 or batch_size < 1:
        raise UserInputError(f"need at least one image and batch size >= 1, got n={n}, batch_size={batch_size}")
    total = -(-n // batch_size) * batch_size
    rows = np.arange(total)
    return np.minimum(rows, n - 1).astype(np.int32).reshape(-1, batch_size), (rows < n).reshape(-1, batch_size)


def accuracy(sur: Surrogate, state: State, x: jax.Array, y: jax.Array, batch_size: int = 256) -> float:
    """Accuracy of the surrogate (running averages) on float images x [N,H,W,C] with labels y [N]."""
    n = int(x.shape[0])
    idx, valid = padded_batches(n, min(batch_size, n))
    correct = sum(int(sur.count_correct(state, x[i], y[i], v)) for i, v in zip(jnp.asarray(idx), jnp.asarray(valid)))
    return correct / n


def readout_features(module: nn.Module, variables: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Penultimate features and logits of a classifier that ends in a Dense readout.

    The features are the input of the last ``nn.Dense`` the module calls (its
    readout), captured with a method interceptor, so no model needs a
    dedicated ``features`` method. Runs in eval mode (running batch-norm statistics).

    Args:
      module: a ``ntga.models`` module.
      variables: its variables (``params`` and maybe ``batch_stats``).
      x: [B, H, W, C] standardised images.

    Returns:
      features [B, D] and logits [B, K].
    """
    feats, logits, _ = _readout(module, variables, x)
    return feats, logits


def readout_layer(module: nn.Module, variables: Any, image_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """The readout of a classifier that ends in a Dense layer: kernel [D, K] and bias [K] (zeros if none).

    That layer computes ``features @ kernel + bias`` from the features of :func:`readout_features`;
    the module's logits are its output, or a fixed positive multiple of it for a module that
    scales after the readout (fast-resnet: x 1/9).
    """
    _, _, layer = _readout(module, variables, jnp.zeros((1, *image_shape), jnp.float32))
    kernel, bias = layer
    return kernel, (jnp.zeros(kernel.shape[-1], kernel.dtype) if bias is None else bias)


def _readout(module, variables, x):
    """Features, logits and (kernel, bias) of the last ``nn.Dense`` call, captured with an interceptor."""
    captured = []

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            dense = context.module
            params = dense.variables.get("params", {}) if dense.has_variable("params", "kernel") else {}
            captured.append((args[0], params.get("kernel"), params.get("bias")))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        logits = module.apply(variables, x, train=False)
    if not captured:
        raise UserInputError(f"{type(module).__name__} has no Dense readout, so it has no penultimate features")
    feats, kernel, bias = captured[-1]
    # explicit size: x may be empty
    return feats.reshape(x.shape[0], math.prod(feats.shape[1:])), logits, (kernel, bias)


__all__ = ["State", "Surrogate", "accuracy", "make_surrogate", "padded_batches", "readout_features", "readout_layer"]
