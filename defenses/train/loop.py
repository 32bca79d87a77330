"""The training loops: input validation, ``train_and_evaluate`` and ``train_many_seeds``."""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ntga.errors import UserInputError
from ntga.pixels import as_float, check_images

from .. import augment as aug
from ..models import MIN_IMAGE_SIZE, get_model
from .config import Array, TrainConfig, TrainHooks, TrainResult
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


def _run(model_name, x_train, y_train, x_test, y_test, config, keys, hooks, progress,
         num_classes, model_kwargs, vmapped) -> list[TrainResult]:
    t_start = time.perf_counter()
    spec = get_model(model_name)
    cfg = config.resolved(spec)
    x_train, y_train, x_test, y_test, k = _prepare(x_train, y_train, x_test, y_test, num_classes, cfg.batch_size)
    module = spec.build(k, **(model_kwargs or {}))
    mean, std = (jnp.asarray(a) for a in aug.channel_stats(x_train))
    n, bsz = x_train.shape[0], cfg.batch_size
    steps = n // bsz
    tx = make_optimizer(cfg, cfg.epochs * steps, spec)
    n_seeds = keys.shape[0]
    # A data-dependent init (fast-resnet's whitening layer) sees the training images as the
    # model will: in pixel units, standardised when the config standardises.
    x_init = None
    if spec.data_init is not None:
        x_init = np.asarray(as_float(jnp.asarray(x_train[:DATA_INIT_IMAGES]), clip=False))
        if cfg.standardize:
            x_init = np.asarray(aug.standardize(jnp.asarray(x_init), mean, std))

    def init(key):
        x0 = jnp.zeros((1, *x_train.shape[1:]), jnp.float32)
        variables = module.init({"params": key, "dropout": key}, x0, train=False)
        if x_init is not None:
            variables = spec.data_init(variables, x_init)  # numpy at trace time: the same for every seed
        params = variables["params"]
        return dict(params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), step=jnp.zeros((), jnp.int32))

    def lift(fn, in_axes):
        return jax.vmap(fn, in_axes=in_axes) if vmapped else fn

    split = jax.vmap(lambda key: jax.random.split(key, 3))(keys)  # [S, 3] keys
    k_init, k_shuffle, k_step = split[:, 0], split[:, 1], split[:, 2]
    if not vmapped:
        k_init, k_shuffle, k_step = k_init[0], k_shuffle[0], k_step[0]
    try:
        # Init runs once: XLA's backend optimisations would cost seconds of
        # compilation per layer (a threefry sampler per parameter) for nothing.
        state = jax.jit(lift(init, 0), compiler_options={"xla_backend_optimization_level": 0})(k_init)
    except UserInputError:
        raise
    except (TypeError, ValueError) as err:  # e.g. flatten sizes that do not fit
        raise UserInputError(f"{model_name} cannot take images of shape {x_train.shape[1:]}: {err}") from None

    # One jitted step per phase of the hooks' schedule, built when the phase begins. Keyed by
    # id(phase): every phase is held by ``schedule`` for the whole run, so the ids stay unique.
    compiled_steps = {}
    schedule = hooks or TrainHooks()

    def train_step_for(epoch):
        """The step of the phase in force, and whether it is new (its first call compiles)."""
        phase = schedule.at_epoch(epoch)
        new = id(phase) not in compiled_steps
        if new:
            step = make_train_step(module, spec, cfg, tx, k, mean, std, phase)
            compiled_steps[id(phase)] = jax.jit(lift(step, (0, None, None, 0, 0)), donate_argnums=0)
        return compiled_steps[id(phase)], new

    eval_step = jax.jit(lift(make_eval_step(module, spec, cfg, mean, std), (0, None, None, None)))
    shuffle = jax.jit(lift(lambda key, epoch: jax.random.permutation(jax.random.fold_in(key, epoch), n)[:steps * bsz]
                           .reshape(steps, bsz), (0, None)))

    # The test set is padded to whole eval batches; the mask keeps padding out of the count.
    eval_bsz = min(max(bsz, 256), x_test.shape[0])
    n_test = x_test.shape[0]
    pad = (-n_test) % eval_bsz
    xt = jnp.asarray(np.concatenate([x_test, np.zeros((pad, *x_test.shape[1:]), x_test.dtype)]))
    yt = jnp.asarray(np.concatenate([y_test, np.zeros(pad, np.int32)]))
    mt = jnp.asarray(np.arange(n_test + pad) < n_test)
    x_all, y_all = jnp.asarray(x_train), jnp.asarray(y_train)

    def evaluate(state):
        correct = sum(eval_step(state, xt[i:i + eval_bsz], yt[i:i + eval_bsz], mt[i:i + eval_bsz])
                      for i in range(0, n_test + pad, eval_bsz))
        return np.asarray(correct, np.float64).reshape(-1) / n_test

    shape = (n_seeds, config.epochs)
    test_acc, train_acc, train_loss = np.full(shape, np.nan), np.zeros(shape), np.zeros(shape)
    # Throughput leaves out each compiling step (the first of every schedule phase).
    train_time, compile_time, compiled_images = 0.0, 0.0, 0
    bar = tqdm(range(config.epochs), desc=model_name, disable=not progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        train_step, compiling = train_step_for(epoch)
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
        train_loss[:, epoch] = loss_sum / (steps * bsz)
        train_acc[:, epoch] = correct / (steps * bsz)
        if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
            test_acc[:, epoch] = evaluate(state)
        bar.set_postfix(loss=f"{train_loss[:, epoch].mean():.3f}", train=f"{train_acc[:, epoch].mean():.3f}",
                        test=f"{test_acc[:, epoch].mean():.3f}")
    bar.close()

    images = config.epochs * steps * bsz * n_seeds
    timed = train_time - compile_time
    images_per_s = (images - compiled_images) / timed if images > compiled_images and timed > 0 else images / train_time
    wall = time.perf_counter() - t_start
    variables = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
    results = []
    for s in range(n_seeds):
        curve = test_acc[s]
        peak = int(np.nanargmax(curve))
        v = jax.tree.map(lambda a: a[s], variables) if vmapped else variables
        if not spec.batch_norm:
            v = {"params": v["params"]}
        results.append(TrainResult(final_test_acc=float(curve[-1]), peak_test_acc=float(curve[peak]),
                                   peak_epoch=peak + 1, test_acc_curve=curve, train_acc_curve=train_acc[s],
                                   train_loss_curve=train_loss[s], wall_time_s=wall,
                                   images_per_s=float(images_per_s), variables=v))
    return results


def train_and_evaluate(model_name: str, x_train, y_train, x_test, y_test, config: TrainConfig, key: Array, *,
                       hooks: TrainHooks | None = None, progress: bool = True, num_classes: int | None = None,
                       model_kwargs: Mapping[str, Any] | None = None) -> TrainResult:
    """Trains ``model_name`` on (x_train, y_train) and tracks test accuracy per epoch.

    Args:
        model_name: a key of ``defenses.models.MODELS``.
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
