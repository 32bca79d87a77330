"""``em``: error-minimizing noise, "Unlearnable Examples" (Huang, Ma, Erfani, Bailey, Wang; ICLR 2021).

The noise ``delta`` minimises, rather than maximises, a surrogate's training
loss, so the protected images look already learned and a network trained on
them picks up the noise instead of the content. Min-min bilevel optimisation:

1. ``delta`` starts uniform in [-eps, eps] (one per image, "sample-wise", or
   one per class added to every image of that class, "class-wise").
2. Repeat for up to ``max_rounds`` rounds:
   a. train the surrogate for ``train_steps`` (10) batches on ``clip(x + delta)``;
   b. for every batch of the data, ``steps`` (20) signed-gradient *descent*
      steps of size ``step_size`` on the surrogate's loss w.r.t. the noise,
      each projected onto the L-inf ball (and, sample-wise, onto valid pixels).
      Class-wise, the gradient is summed over the batch's images of each class;
   c. stop once the surrogate's accuracy on ``clip(x + delta)`` exceeds
      ``stop_acc`` (0.99).
3. Round to uint8 within the budget.

Defaults and their source: eps 8/255 colour (paper) / 0.3 greyscale (the
project's MNIST budget); step size eps/10 (the paper's 0.8/255 at 8/255);
10 training batches, 20 noise steps, stop at 99% accuracy (paper). As in the
authors' implementation the noise search and the stopping test use the
surrogate in evaluation mode (batch-norm running averages), and the surrogate
is trained with its registry recipe (for ``resnet18``: SGD 0.1, momentum 0.9,
weight decay 5e-4, as in the paper) at a constant learning rate, without
augmentation. Inputs are standardised per channel like ``ntga.train`` does,
with the *clean* images' statistics so the network's input convention stays
fixed while the noise changes.

Deviations (CPU): the paper's surrogate is ResNet-18 (``surrogate=resnet18``
keeps its full width; practical on a GPU). Each round costs ``steps``
forward/backward passes over the whole data set and XLA:CPU convolutions are
slow at small channel counts, so the default here is ``small-cnn`` at width 4
(4-8-16 channels; width 8 was 3-4x slower per image step). Measured on the
2-core machine while shared (load about 8; CPU time about half the wall
time): MNIST 2,000 images in 33 s and 8,000 in 116 s (2 rounds each, about
6.5 s per 1,000 images per round); CIFAR-10 2,000 in 91 s (4 rounds) and
6,000 in 381 s (6 rounds, about 10 s per 1,000 images per round). That
extrapolates to about 11 minutes for 50,000 MNIST images (2 rounds) and
14-20 minutes for 12,000 CIFAR images (7-10 rounds), about half of that on
an idle machine. ``max_rounds`` (default 10) bounds a run that does not
converge; ``info`` says whether the 99% criterion was reached
(``stopped_early``). The batch size 256 is a CPU choice; sample-wise, the
noise steps of one image do not depend on the batch (evaluation mode).

Long runs are resumable: after every round the noise, the surrogate's state
(``jax.tree_util`` leaves) and the round counter go to ``task.workdir``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ntga.train.inputs import channel_stats
from ntga.models import MODELS
from ntga.errors import UserInputError
from ntga.options import check_choice
from ntga.methods.base import MethodSpec, Protected, ProtectTask, grey_or_colour_eps
from ntga.methods.surrogate import make_surrogate, padded_batches
from ntga.methods.tree_io import load_tree, save_tree
from ntga.pixels import (ascent_step, clip_delta, project_ball, project_delta, quantize_to_budget, random_delta,
                         to_float)

CPU_SURROGATE_WIDTH = 4  # small-cnn width when none is given (CPU-feasible; see the module docstring)
CHECKPOINT = "em_state.npz"


@dataclass(frozen=True)
class EMConfig:
    """Settings of ``em``.

    Attributes:
      eps: L-inf budget in [0, 1] pixel units (default 0.3 greyscale, 8/255 colour).
      noise: "sample-wise" (one noise image per image) or "class-wise" (one per class).
      steps: signed-gradient descent steps on the noise per batch and round (paper: 20).
      step_size: size of each step (default eps / 10: the paper's 0.8/255 at eps 8/255).
      train_steps: surrogate training batches per round (paper: 10).
      stop_acc: stop once the surrogate's accuracy on the poisons exceeds this (paper: 0.99).
      max_rounds: at most this many rounds (train + noise search over all data).
      batch_size: images per batch, for training and for the noise search.
      surrogate: the surrogate network, a name from ``ntga.models.MODELS`` (paper: resnet18).
      surrogate_width: the surrogate's ``width`` attribute; None: 4 for small-cnn
        (CPU default), the model's own width for the others.
      surrogate_lr: the surrogate's learning rate (None: the model's registry default).
    """

    eps: float | None = None
    noise: Literal["sample-wise", "class-wise"] = "sample-wise"
    steps: int = 20
    step_size: float | None = None
    train_steps: int = 10
    stop_acc: float = 0.99
    max_rounds: int = 10
    batch_size: int = 256
    surrogate: str = "small-cnn"
    surrogate_width: int | None = None
    surrogate_lr: float | None = None

    def __post_init__(self):
        if self.eps is not None and not 0.0 < self.eps <= 1.0:
            raise UserInputError(f"--eps must be in (0, 1], got {self.eps}")
        if self.noise not in ("sample-wise", "class-wise"):
            raise UserInputError(f"noise must be sample-wise or class-wise, got {self.noise!r}")
        for name in ("steps", "train_steps", "max_rounds", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise UserInputError(f"{name} must be an integer >= 1, got {value!r}")
        if self.step_size is not None and not self.step_size > 0:
            raise UserInputError(f"step_size must be > 0, got {self.step_size}")
        if not 0.0 < self.stop_acc <= 1.0:
            raise UserInputError(f"stop_acc must be in (0, 1], got {self.stop_acc}")
        check_choice("surrogate", self.surrogate, MODELS)
        if self.surrogate_width is not None and self.surrogate_width < 1:
            raise UserInputError(f"surrogate_width must be >= 1 (or none), got {self.surrogate_width}")
        if self.surrogate_lr is not None and not self.surrogate_lr > 0:
            raise UserInputError(f"surrogate_lr must be > 0 (or none), got {self.surrogate_lr}")


def _resolve(config: EMConfig, image_shape: tuple[int, ...], num_images: int | None) -> EMConfig:
    num_channels = image_shape[-1]
    eps = grey_or_colour_eps(config.eps, num_channels)
    width = config.surrogate_width
    if width is None and config.surrogate == "small-cnn":
        width = CPU_SURROGATE_WIDTH
    return replace(config, eps=eps, step_size=eps / 10 if config.step_size is None else config.step_size,
                   surrogate_width=width)


@functools.lru_cache(maxsize=8)
def _round_fns(sur, classwise: bool):
    """Jitted pieces of one round, on one batch each: a training step, a noise search, a correct count.

    The data stay on the host and arrive batch by batch, and the budget, step
    size and step count are arguments, so the compilations depend only on the
    surrogate and the batch shape and are reused by every run of that shape.
    ``noise`` is the batch's rows of the noise [B, H, W, C] (sample-wise) or all
    class patterns [K, H, W, C] (class-wise).
    """
    num_classes = sur.num_classes

    def poisoned(x, noise, y):
        return jnp.clip(x + (noise[y] if classwise else noise), 0.0, 1.0)

    def train_on(state, x, noise, y, key):
        return sur.train_step(state, poisoned(x, noise, y), y, key)[0]

    def search(state, x, noise, y, valid, eps, alpha, steps):
        if classwise:
            def body(_, d):  # d: [K, H, W, C]
                g = sur.input_grad(state, poisoned(x, d, y), y, valid)
                # The paper's class-wise step: one signed step on the gradient summed over the class's images.
                g_class = jax.ops.segment_sum(g, y, num_segments=num_classes)
                return project_ball(d - ascent_step(g_class, alpha, "linf"), eps, "linf")
        else:
            def body(_, d):  # d: [B, H, W, C]
                g = sur.input_grad(state, poisoned(x, d, y), y, valid)
                # A signed descent step, back into the ball, then onto valid pixels.
                return project_delta(d - ascent_step(g, alpha, "linf"), x, eps, "linf")

        return jax.lax.fori_loop(0, steps, body, noise)

    def correct(state, x, noise, y, valid):
        return sur.count_correct(state, poisoned(x, noise, y), y, valid)

    return jax.jit(train_on, donate_argnums=0), jax.jit(search), jax.jit(correct)


def _save(path, delta, state, rounds: int, acc: float) -> None:
    save_tree(path, state, delta=delta, rounds=rounds, acc=acc)


def _load(path, delta, state):
    """The saved round, or None when there is none (or it was damaged: then EM restarts from round 0)."""
    loaded = load_tree(path, state, extras=("delta", "rounds", "acc"))
    if loaded is None:
        return None
    stored, extras = loaded
    saved = extras["delta"]
    if saved.shape != delta.shape or saved.dtype != delta.dtype:
        raise UserInputError(f"{path}: noise is {saved.dtype}{list(saved.shape)}, expected "
                             f"{delta.dtype}{list(delta.shape)}; delete it or run without --resume")
    return np.array(saved), jax.tree.map(jnp.asarray, stored), int(extras["rounds"]), float(extras["acc"])


def protect_em(task: ProtectTask, config: EMConfig, key: jax.Array) -> Protected:
    """Error-minimizing noise for ``task.x`` (see the module docstring), rounded within the budget."""
    classwise = config.noise == "class-wise"
    eps = float(config.eps)
    n, k = task.x.shape[0], task.num_classes
    bsz = min(config.batch_size, n)
    x = to_float(task.x, np.float32)  # host arrays; batches travel to the device one at a time
    y = task.y.astype(np.int32)
    mean, std = channel_stats(task.x)
    overrides = {} if config.surrogate_width is None else {"width": config.surrogate_width}
    sur = make_surrogate(config.surrogate, k, overrides=overrides, lr=config.surrogate_lr, batch_size=bsz)
    k_delta, k_init, k_shuffle, k_step = jax.random.split(key, 4)

    shape = (k, *x.shape[1:]) if classwise else x.shape
    delta = np.array(random_delta(k_delta, shape, jnp.float32, eps, "linf"))  # writable copy
    if not classwise:
        delta = clip_delta(delta, x)  # numpy in, numpy out
    state = sur.init(k_init, x.shape[1:], mean, std)
    rounds, acc = 0, 0.0
    path = None if task.workdir is None else task.workdir / CHECKPOINT
    saved = _load(path, delta, state) if task.resume and path is not None else None
    if saved is not None:
        delta, state, rounds, acc = saved

    train_on, search, correct = _round_fns(sur, classwise)
    args = jnp.float32(eps), jnp.float32(config.step_size), jnp.int32(config.steps)
    batches = list(zip(*padded_batches(n, bsz)))
    per_epoch = n // bsz  # training drops the last partial batch, like ntga.train
    orders: dict[int, np.ndarray] = {}

    def train_rows(count: int) -> np.ndarray:
        # Batch ``count`` of an endless sequence of shuffled epochs: resumable from the counter alone.
        epoch, pos = divmod(count, per_epoch)
        if epoch not in orders:
            orders.clear()
            orders[epoch] = np.asarray(jax.random.permutation(jax.random.fold_in(k_shuffle, epoch), n))
        return orders[epoch][pos * bsz:(pos + 1) * bsz]

    def noise_of(rows):
        return delta if classwise else delta[rows]

    bar = tqdm(total=config.max_rounds, initial=rounds, desc="em rounds", unit="round", disable=not task.progress,
               leave=False)
    while rounds < config.max_rounds and not acc > config.stop_acc:
        for j in range(config.train_steps):
            rows = train_rows(rounds * config.train_steps + j)
            state = train_on(state, x[rows], noise_of(rows), y[rows], k_step)
        for rows, valid in batches:
            found = np.asarray(search(state, x[rows], noise_of(rows), y[rows], valid, *args))
            if classwise:
                delta = found
            else:
                delta[rows[valid]] = found[valid]  # padding rows repeat a real row: not written
        acc = sum(int(correct(state, x[rows], noise_of(rows), y[rows], valid)) for rows, valid in batches) / n
        rounds += 1
        if path is not None:
            _save(path, delta, state, rounds, acc)
        bar.update(1)
        bar.set_postfix(acc=f"{acc:.3f}")
    bar.close()

    x_adv = np.clip(x + (delta[y] if classwise else delta), 0.0, 1.0)
    x_uint8 = np.asarray(quantize_to_budget(x_adv, x, eps, "linf"))
    info = {"rounds": rounds, "surrogate_accuracy": acc, "stopped_early": bool(acc > config.stop_acc)}
    return Protected(x=x_uint8, y=task.y.copy(), info=info)


SPECS = {
    "em": MethodSpec(
        name="em", summary="error-minimizing noise, Unlearnable Examples (Huang et al., ICLR 2021)",
        config_type=EMConfig, protect=protect_em, resolve=_resolve, budget_norm="linf"),
}
