"""The victims' training loop: input validation, ``train_and_evaluate`` and ``train_many_seeds``.

A run is set up (:class:`_Setup`), its states initialised with the trainer core
(:mod:`ntga.train.core`), trained epoch by epoch with one jitted update per hook phase,
evaluated on the whole test set, and returned as one :class:`TrainResult` per seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ntga.errors import UserInputError
from ntga.pixels import as_float, check_images

from . import inputs as aug
from ..models import MIN_IMAGE_SIZE, get_model
from .config import Array, TrainConfig, TrainHooks, TrainResult
from .core import INIT_COMPILER_OPTIONS, epoch_order, init_state
from .step import make_eval_step, make_optimizer, make_train_step

DATA_INIT_IMAGES = 10_000  # training images a data-dependent init (whitening) looks at


def _victim_images(name: str, x: Any) -> np.ndarray:
    """Images the victims can train on: uint8 as stored, floats as float32 (greyscale [N, H, W] gains C = 1)."""
    x = check_images(x, name, add_channel=True)
    if x.shape[1] < MIN_IMAGE_SIZE or x.shape[2] < MIN_IMAGE_SIZE:
        raise UserInputError(f"{name} images are {x.shape[1]}x{x.shape[2]}; the victims need at least "
                             f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
    return x if x.dtype == np.uint8 else x.astype(np.float32)


def _check_labels(name: str, y: Any, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise UserInputError(f"{name} must be int labels [{n}] (one per image), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserInputError(f"{name} must be integer class labels, got dtype {y.dtype}")
    return y.astype(np.int32)


def _prepare(x_train, y_train, x_test, y_test, num_classes, batch_size):
    x_train, x_test = _victim_images("x_train", x_train), _victim_images("x_test", x_test)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserInputError(f"x_train images {x_train.shape[1:]} and x_test images {x_test.shape[1:]} differ in shape")
    y_train = _check_labels("y_train", y_train, x_train.shape[0])
    y_test = _check_labels("y_test", y_test, x_test.shape[0])
    if num_classes is None:
        num_classes = int(max(y_train.max(), y_test.max())) + 1
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        if y.min() < 0 or y.max() >= num_classes:
            raise UserInputError(f"{name} labels must lie in [0, {num_classes - 1}], found [{y.min()}, {y.max()}]")
    if num_classes < 2:
        raise UserInputError(f"need at least 2 classes, got {num_classes}")
    if batch_size > x_train.shape[0]:
        raise UserInputError(f"batch_size {batch_size} exceeds the {x_train.shape[0]} training images")
    return x_train, y_train, x_test, y_test, int(num_classes)


def _typed_key(key: Array, batched: bool = False) -> Array:
    """Accepts new-style typed keys and legacy uint32 ``PRNGKey`` arrays ([2] or [S, 2])."""
    key = jnp.asarray(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.dtype != jnp.uint32 or key.shape[-1:] != (2,) or key.ndim != (2 if batched else 1):
        raise UserInputError(f"expected a PRNG key (jax.random.key), got an array of shape {key.shape} "
                             f"and dtype {key.dtype}")
    return jax.random.wrap_key_data(key)


@dataclass(frozen=True)
class _Setup:
    """What one run trains: the victim, its resolved recipe and optimizer, and the checked data."""

    name: str
    spec: Any
    cfg: TrainConfig
    module: Any
    tx: Any
    num_classes: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mean: jax.Array  # [C] per-channel statistics of x_train in pixel units
    std: jax.Array
    steps: int  # updates per epoch (the last partial batch is dropped)

    @property
    def batch_size(self) -> int:
        return self.cfg.batch_size


def _setup(model_name, x_train, y_train, x_test, y_test, config, num_classes, model_kwargs) -> _Setup:
    spec = get_model(model_name)
    cfg = config.resolved(spec)
    x_train, y_train, x_test, y_test, k = _prepare(x_train, y_train, x_test, y_test, num_classes, cfg.batch_size)
    module = spec.build(k, **(model_kwargs or {}))
    mean, std = (jnp.asarray(a) for a in aug.channel_stats(x_train))
    steps = x_train.shape[0] // cfg.batch_size
    tx = make_optimizer(cfg, cfg.epochs * steps, spec)
    return _Setup(name=model_name, spec=spec, cfg=cfg, module=module, tx=tx, num_classes=k, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, mean=mean,
                  std=std, steps=steps)


def _init_states(run: _Setup, k_init: Array, lift: Callable) -> dict:
    """The training states of every seed (``lift`` vmaps over seeds when they train together)."""
    # A data-dependent init (fast-resnet's whitening layer) sees the training images as the
    # model will: in pixel units, standardised when the config standardises.
    x_init = None
    if run.spec.data_init is not None:
        x_init = np.asarray(as_float(jnp.asarray(run.x_train[:DATA_INIT_IMAGES]), clip=False))
        if run.cfg.standardize:
            x_init = np.asarray(aug.standardize(jnp.asarray(x_init), run.mean, run.std))

    def init(key):
        return init_state(run.module, run.tx, run.x_train.shape[1:], key, data_init=run.spec.data_init,
                          x_init=x_init)

    try:
        return jax.jit(lift(init, 0), compiler_options=INIT_COMPILER_OPTIONS)(k_init)
    except UserInputError:
        raise
    except (TypeError, ValueError) as err:  # e.g. flatten sizes that do not fit
        raise UserInputError(f"{run.name} cannot take images of shape {run.x_train.shape[1:]}: {err}") from None


class _PhaseSteps:
    """One jitted update per phase of the hooks' schedule, built when the phase begins."""

    def __init__(self, run: _Setup, hooks: TrainHooks | None, lift: Callable):
        self.run, self.lift = run, lift
        self.schedule = hooks or TrainHooks()
        # Keyed by id(phase): every phase is held by ``schedule`` for the whole run, so the ids stay unique.
        self.compiled: dict[int, Callable] = {}

    def at(self, epoch: int) -> tuple[Callable, bool]:
        """The step of the phase in force, and whether it is new (its first call compiles)."""
        phase = self.schedule.at_epoch(epoch)
        new = id(phase) not in self.compiled
        if new:
            r = self.run
            step = make_train_step(r.module, r.spec, r.cfg, r.tx, r.num_classes, r.mean, r.std, phase)
            self.compiled[id(phase)] = jax.jit(self.lift(step, (0, None, None, 0, 0)), donate_argnums=0)
        return self.compiled[id(phase)], new


def _make_evaluate(run: _Setup, lift: Callable) -> Callable[[dict], np.ndarray]:
    """``evaluate(state) -> [S]`` test accuracy of every seed over the whole test set."""
    eval_step = jax.jit(lift(make_eval_step(run.module, run.spec, run.cfg, run.mean, run.std), (0, None, None, None)))
    # The test set is padded to whole eval batches; the mask keeps padding out of the count.
    x_test, y_test = run.x_test, run.y_test
    eval_bsz = min(max(run.batch_size, 256), x_test.shape[0])
    n_test = x_test.shape[0]
    pad = (-n_test) % eval_bsz
    xt = jnp.asarray(np.concatenate([x_test, np.zeros((pad, *x_test.shape[1:]), x_test.dtype)]))
    yt = jnp.asarray(np.concatenate([y_test, np.zeros(pad, np.int32)]))
    mt = jnp.asarray(np.arange(n_test + pad) < n_test)

    def evaluate(state):
        correct = sum(eval_step(state, xt[i:i + eval_bsz], yt[i:i + eval_bsz], mt[i:i + eval_bsz])
                      for i in range(0, n_test + pad, eval_bsz))
        return np.asarray(correct, np.float64).reshape(-1) / n_test

    return evaluate


@dataclass
class _Curves:
    """Per-seed, per-epoch curves of a run and its training-throughput bookkeeping."""

    test_acc: np.ndarray
    train_acc: np.ndarray
    train_loss: np.ndarray
    images_per_s: float = 0.0


def _train_epochs(run: _Setup, state: dict, steps_of: _PhaseSteps, evaluate: Callable, k_shuffle: Array,
                  k_step: Array, lift: Callable, n_seeds: int, epochs: int, eval_every: int,
                  progress: bool) -> tuple[dict, _Curves]:
    """The epoch loop: shuffled batches, one update each, the test set after evaluated epochs."""
    n, bsz, steps = run.x_train.shape[0], run.batch_size, run.steps
    shuffle = jax.jit(lift(lambda key, epoch: epoch_order(key, epoch, n, bsz), (0, None)))
    x_all, y_all = jnp.asarray(run.x_train), jnp.asarray(run.y_train)
    shape = (n_seeds, epochs)
    curves = _Curves(test_acc=np.full(shape, np.nan), train_acc=np.zeros(shape), train_loss=np.zeros(shape))
    # Throughput leaves out each compiling step (the first of every schedule phase).
    train_time, compile_time, compiled_images = 0.0, 0.0, 0
    bar = tqdm(range(epochs), desc=run.name, disable=not progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        train_step, compiling = steps_of.at(epoch)
        order = shuffle(k_shuffle, epoch)
        sums = []
        for i in range(steps):
            state, metrics = train_step(state, x_all, y_all, order[..., i, :], k_step)
            sums.append(metrics)
            if compiling:
                jax.block_until_ready(metrics)
                compile_time += time.perf_counter() - t0
                compiled_images += bsz * n_seeds
                compiling = False
        loss_sum, correct = (np.asarray(jnp.stack(m), np.float64).reshape(steps, -1).sum(0) for m in zip(*sums))
        train_time += time.perf_counter() - t0
        curves.train_loss[:, epoch] = loss_sum / (steps * bsz)
        curves.train_acc[:, epoch] = correct / (steps * bsz)
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            curves.test_acc[:, epoch] = evaluate(state)
        bar.set_postfix(loss=f"{curves.train_loss[:, epoch].mean():.3f}",
                        train=f"{curves.train_acc[:, epoch].mean():.3f}",
                        test=f"{curves.test_acc[:, epoch].mean():.3f}")
    bar.close()
    images = epochs * steps * bsz * n_seeds
    timed = train_time - compile_time
    curves.images_per_s = ((images - compiled_images) / timed if images > compiled_images and timed > 0
                           else images / train_time)
    return state, curves


def _results(run: _Setup, state: dict, curves: _Curves, n_seeds: int, vmapped: bool,
             wall: float) -> list[TrainResult]:
    variables = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
    mean, std = ((np.asarray(run.mean, np.float32), np.asarray(run.std, np.float32)) if run.cfg.standardize
                 else (None, None))
    results = []
    for s in range(n_seeds):
        curve = curves.test_acc[s]
        peak = int(np.nanargmax(curve))
        v = jax.tree.map(lambda a: a[s], variables) if vmapped else variables
        if not run.spec.batch_norm:
            v = {"params": v["params"]}
        results.append(TrainResult(final_test_acc=float(curve[-1]), peak_test_acc=float(curve[peak]),
                                   peak_epoch=peak + 1, test_acc_curve=curve, train_acc_curve=curves.train_acc[s],
                                   train_loss_curve=curves.train_loss[s], wall_time_s=wall,
                                   images_per_s=float(curves.images_per_s), variables=v, mean=mean, std=std))
    return results


def _run(model_name, x_train, y_train, x_test, y_test, config, keys, hooks, progress,
         num_classes, model_kwargs, vmapped) -> list[TrainResult]:
    """Trains ``keys.shape[0]`` seeds of one victim (vmapped together, or one seed unbatched)."""
    t_start = time.perf_counter()
    run = _setup(model_name, x_train, y_train, x_test, y_test, config, num_classes, model_kwargs)

    def lift(fn, in_axes):
        return jax.vmap(fn, in_axes=in_axes) if vmapped else fn

    split = jax.vmap(lambda key: jax.random.split(key, 3))(keys)  # [S, 3] keys
    k_init, k_shuffle, k_step = split[:, 0], split[:, 1], split[:, 2]
    if not vmapped:
        k_init, k_shuffle, k_step = k_init[0], k_shuffle[0], k_step[0]
    state = _init_states(run, k_init, lift)
    n_seeds = keys.shape[0]
    state, curves = _train_epochs(run, state, _PhaseSteps(run, hooks, lift), _make_evaluate(run, lift), k_shuffle,
                                  k_step, lift, n_seeds, config.epochs, config.eval_every, progress)
    return _results(run, state, curves, n_seeds, vmapped, time.perf_counter() - t_start)


def train_and_evaluate(model_name: str, x_train, y_train, x_test, y_test, config: TrainConfig, key: Array, *,
                       hooks: TrainHooks | None = None, progress: bool = True, num_classes: int | None = None,
                       model_kwargs: Mapping[str, Any] | None = None) -> TrainResult:
    """Trains ``model_name`` on (x_train, y_train) and tracks test accuracy per epoch.

    Args:
        model_name: a key of ``ntga.models.MODELS``.
        x_train: images [N, H, W, C] (uint8 or float in [0, 1]), possibly poisoned.
        y_train: int labels [N].
        x_test: images [M, H, W, C], same H, W, C.
        y_test: int labels [M].
        config: training recipe; ``None`` fields take the model's defaults.
        key: PRNG key; the only source of randomness.
        hooks: breaker extension points (see the module docstring).
        progress: show a tqdm bar over epochs.
        num_classes: defaults to max label + 1 over both sets.
        model_kwargs: module overrides, e.g. ``{"width": 16}`` or ``{"depth": 28, "widen": 10}``.

    Returns:
        TrainResult.

    Raises:
        UserInputError: unknown model/optimizer/loss, images that do not fit the
            victims (not [N, H, W, C], smaller than 8x8, floats outside [0, 1]),
            labels out of range, batch larger than the training set.
    """
    keys = _typed_key(key)[None]
    return _run(model_name, x_train, y_train, x_test, y_test, config, keys, hooks, progress,
                num_classes, model_kwargs, vmapped=False)[0]


def train_many_seeds(model_name: str, x_train, y_train, x_test, y_test, config: TrainConfig,
                     keys: Array | Sequence[Array], *, hooks: TrainHooks | None = None, progress: bool = True,
                     num_classes: int | None = None, model_kwargs: Mapping[str, Any] | None = None,
                     vmap: bool | None = None) -> list[TrainResult]:
    """``train_and_evaluate`` for each key in ``keys`` ([S] key array or a list of keys).

    Victims without batch norm or dropout (fnn, fnn-relu) train all seeds at
    once with ``jax.vmap`` over the train and eval steps (one compilation,
    batched matmuls); the others loop, because vmapping convolutions over
    per-seed weights turns them into grouped convolutions that XLA:CPU runs
    slowly. ``vmap=True``/``False`` overrides the choice (vmap works for every
    victim; it is a speed decision). Seed ``s`` gives the same run as
    ``train_and_evaluate(..., keys[s])`` up to float rounding.
    """
    if isinstance(keys, (list, tuple)):
        keys = jnp.stack([_typed_key(k) for k in keys]) if keys else jnp.zeros((0,))
    else:
        keys = _typed_key(keys, batched=True)
    if keys.ndim != 1 or keys.shape[0] == 0:
        raise UserInputError(f"keys must be a non-empty [S] array of PRNG keys, got shape {keys.shape}")
    spec = get_model(model_name)
    if vmap is None:
        vmap = not (spec.batch_norm or spec.dropout)
    if vmap:
        return _run(model_name, x_train, y_train, x_test, y_test, config, keys, hooks, progress,
                    num_classes, model_kwargs, vmapped=True)
    return [train_and_evaluate(model_name, x_train, y_train, x_test, y_test, config, k, hooks=hooks,
                               progress=progress, num_classes=num_classes, model_kwargs=model_kwargs) for k in keys]
