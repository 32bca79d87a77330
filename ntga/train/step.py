"""Pure step factories of the victim trainer: optimizer, train step, eval step.

``make_train_step`` is where the hooks run, in the order the contract in
:mod:`ntga.train` describes; jit it at the call site.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ntga.errors import UserInputError
from ntga.pixels import as_float

from . import inputs as aug
from ..models import ModelSpec
from .config import LOSSES, Array, TrainConfig, TrainHooks


def _schedule(cfg: TrainConfig, total_steps: int):
    """The learning rate per step: an optional linear warm-up from 0, then the configured decay."""
    total = max(total_steps, 1)
    # At least one step after the warm-up, so even a one-step run trains.
    warm = min(int(round((cfg.warmup or 0.0) * total)), total - 1)
    decay = {"cosine": lambda n: optax.cosine_decay_schedule(cfg.lr, decay_steps=n),
             "linear": lambda n: optax.linear_schedule(cfg.lr, 0.0, transition_steps=n),
             "constant": lambda n: optax.constant_schedule(cfg.lr)}[cfg.schedule]
    if not warm:
        # A constant rate stays a plain float: the optimizer state (and saved checkpoints) keep
        # the structure they had before schedules could warm up.
        return cfg.lr if cfg.schedule == "constant" else decay(total)
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, transition_steps=warm),
                                 decay(max(total - warm, 1))], [warm])


def _scaled(schedule, factor: float):
    return schedule * factor if not callable(schedule) else (lambda step: schedule(step) * factor)


def _base_optimizer(cfg: TrainConfig, lr, weight_decay: float) -> optax.GradientTransformation:
    if cfg.optimizer == "sgd":
        opt = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=bool(cfg.nesterov and cfg.momentum))
    else:
        opt = optax.adam(lr)
    # Coupled L2 (added to the gradient before momentum), as PyTorch's SGD does.
    return optax.chain(optax.add_decayed_weights(weight_decay), opt) if weight_decay else opt


def param_groups(params, spec: ModelSpec):
    """Per-parameter labels, "frozen" | "norm_bias" | "default", from the spec's predicates."""
    def label(path, _):
        names = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        if spec.is_frozen is not None and spec.is_frozen(names):
            return "frozen"
        if spec.is_norm_bias is not None and spec.is_norm_bias(names):
            return "norm_bias"
        return "default"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg: TrainConfig, total_steps: int, spec: ModelSpec | None = None
                   ) -> optax.GradientTransformation:
    """The optax transform of a resolved config (schedule over ``total_steps``).

    With ``spec``, its parameter groups apply: parameters ``spec.is_frozen``
    marks are never updated (no step, no decay, no momentum), and with SGD
    those ``spec.is_norm_bias`` marks train with ``spec.norm_bias_lr_scale``
    times the learning rate and the same absolute weight decay per step (their
    coupled decay is divided by the scale). Adam normalises its steps, so it
    keeps one learning rate for every trained parameter.
    """
    lr = _schedule(cfg, total_steps)
    base = _base_optimizer(cfg, lr, cfg.weight_decay)
    if spec is None or (spec.is_frozen is None and spec.is_norm_bias is None):
        return base
    scale = spec.norm_bias_lr_scale if cfg.optimizer == "sgd" else 1.0
    groups = {"default": base, "frozen": optax.set_to_zero(),
              "norm_bias": _base_optimizer(cfg, _scaled(lr, scale), cfg.weight_decay / scale)}
    return optax.multi_transform(groups, lambda params: param_groups(params, spec))


def _targets(y: Array, num_classes: int) -> Array:
    """int labels [B] -> one-hot [B, k]; soft targets pass through (float32)."""
    if y.ndim == 1:
        return jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
    if y.shape[-1] != num_classes:
        raise UserInputError(f"soft targets must be [B, {num_classes}], got {y.shape}")
    return y.astype(jnp.float32)


def make_train_step(module, spec: ModelSpec, cfg: TrainConfig, tx, num_classes: int,
                    mean: Array | None, std: Array | None, hooks: TrainHooks | None = None):
    """Pure ``step(state, x_all, y_all, idx [B], step_key) -> (state, (loss_sum, correct))``.

    ``state`` is a dict with ``params``, ``batch_stats`` (empty without batch
    norm), ``opt_state`` and ``step`` (:mod:`ntga.train.core`); ``x_all`` holds
    the raw training images; ``mean``/``std`` [C] standardise them when
    ``cfg.standardize`` (None otherwise).
    """
    if cfg.standardize and (mean is None or std is None):
        raise ValueError("a standardising step needs the per-channel mean and std")
    hooks = hooks or TrainHooks()
    loss_of = hooks.loss_fn or LOSSES[cfg.loss]
    bn = spec.batch_norm
    # Label smoothing belongs to the configured loss: a breaker's replacement loss (APL) and the
    # adversarial inner loss (PGD, UEraser-Max) see the hard targets, as their papers define them.
    smoothing = 0.0 if hooks.loss_fn is not None else float(cfg.label_smoothing or 0.0)

    def smooth(targets):
        return targets * (1.0 - smoothing) + smoothing / num_classes if smoothing else targets

    def forward(params, batch_stats, x, train, dropout_key):
        if cfg.standardize:
            x = aug.standardize(x, mean, std)
        variables = {"params": params, **({"batch_stats": batch_stats} if bn else {})}
        # Logits are cast to float32 so losses stay exact under a bfloat16 module dtype.
        if train and bn:
            logits, updates = module.apply(variables, x, train=True, rngs={"dropout": dropout_key},
                                           mutable=["batch_stats"])
            return logits.astype(jnp.float32), updates
        return module.apply(variables, x, train=train, rngs={"dropout": dropout_key}).astype(jnp.float32), {}

    def step(state, x_all, y_all, idx, step_key):
        k_drop, k_aug, k_hook, k_adv = jax.random.split(jax.random.fold_in(step_key, state["step"]), 4)
        x, y = as_float(x_all[idx], clip=False), y_all[idx]
        shape = x.shape
        if cfg.augment:
            x = aug.random_crop_flip(k_aug, x)
        if hooks.batch_transform is not None:
            x, y = hooks.batch_transform(k_hook, x, y)
        if hooks.adversarial is not None:
            frozen = jax.lax.stop_gradient((state["params"], state["batch_stats"]))

            def input_loss(xi, yi, train=True):
                logits, _ = forward(*frozen, xi.astype(jnp.float32), train, k_drop)
                return loss_of(logits, _targets(yi, num_classes))

            x = jax.lax.stop_gradient(hooks.adversarial(k_adv, input_loss, x, y))
        if x.shape != shape:
            raise UserInputError(f"a breaker hook changed the batch shape from {shape} to {x.shape}")
        targets = _targets(y, num_classes)
        x = x.astype(jnp.float32)
        fit_targets = smooth(targets)

        def objective(params):
            logits, updates = forward(params, state["batch_stats"], x, True, k_drop)
            return loss_of(logits, fit_targets).mean(), (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        changes, opt_state = tx.update(grads, state["opt_state"], state["params"])
        new_state = dict(params=optax.apply_updates(state["params"], changes),
                         batch_stats=updates.get("batch_stats", state["batch_stats"]),
                         opt_state=opt_state, step=state["step"] + 1)
        correct = jnp.sum(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
        return new_state, (loss * idx.shape[0], correct)

    return step


def tta_logits(apply, x: Array, tta: str | None) -> Array:
    """Logits of ``apply`` averaged over the test-time views ``tta`` names (see ``TTAS``)."""
    logits = apply(x).astype(jnp.float32)
    if tta == "flip":
        logits = 0.5 * (logits + apply(x[:, :, ::-1]).astype(jnp.float32))
    return logits


def make_eval_step(module, spec: ModelSpec, cfg: TrainConfig, mean: Array, std: Array):
    """Pure ``eval_step(state, x [B,...] raw, y [B], mask [B] bool) -> number correct`` (with ``cfg.tta``)."""

    def eval_step(state, x, y, mask):
        x = as_float(x, clip=False)
        if cfg.standardize:
            x = aug.standardize(x, mean, std)
        variables = {"params": state["params"], **({"batch_stats": state["batch_stats"]} if spec.batch_norm else {})}
        logits = tta_logits(lambda v: module.apply(variables, v, train=False), x, cfg.tta)
        return jnp.sum((jnp.argmax(logits, -1) == y) & mask)

    return eval_step
