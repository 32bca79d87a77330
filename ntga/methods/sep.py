"""``sep``: self-ensemble protection -- training checkpoints as the attack ensemble.

Paper: S. Chen, G. Yuan, X. Cheng, Y. Gong, M. Qin, Y. Wang, X. Huang,
"Self-Ensemble Protection: Training Checkpoints Are Good Data Protectors",
ICLR 2023 (code: github.com/Sizhe-Chen/SEP).

Algorithm:
  1. Train one surrogate on the clean training data and keep ``n`` evenly
     spaced checkpoints f_1..f_n (paper: ResNet-18, 120 epochs, 15 checkpoints).
  2. For every image x with label y, run ``T`` targeted signed-gradient steps
     towards class ``t = (y + K//2) mod K`` ((y + 5) mod 10 in the paper):
         g = (1/n) sum_k grad_x L(f_k(x'), t)
         x' <- clip_[0,1](proj_{||x' - x||_inf <= eps}(x' - alpha * sign(g)))
     L is the cross-entropy (SEP) or, with ``feature_alignment`` (SEP-FA), the
     squared distance between the penultimate features of f_k(x') and the mean
     feature of class t under f_k over the clean training data (neural-collapse
     centres). Features are the input of the model's readout Dense layer,
     captured with a Flax method interceptor, so every ``ntga.models``
     surrogate works.
  3. Optional variance reduction (SEP-FA-VR, ``vr_inner_steps`` M > 0, after
     SVRE, Xiong et al. CVPR 2022): each outer step then runs M inner steps on
     a copy x'' with a random checkpoint k each, accumulating
     G += grad_k(x'') - (grad_k(x') - g), and moves x' by ``-alpha sign(G)``.

Paper defaults (paper and released code): 30 steps of alpha = 1/255,
eps = 2/255 (also 8/255), checkpoints of a 120-epoch ResNet-18 taken every
8 epochs (15; the code's SEP and SEP-FA examples use 30), M = 15 for VR,
gradients averaged without normalisation, batch norm in eval mode.

Defaults here and what deviates, all for a 2-core CPU (the paper's surrogate
alone would take days here); every paper value stays reachable:
  * surrogate ``small-cnn`` of width 16 (``surrogate=resnet18
    surrogate_width=none`` for the paper's), trained ``epochs=5`` with its
    default recipe (paper 120), ``checkpoints=5`` (paper 15), i.e. one per epoch;
  * ``steps`` None -> 4 greyscale / 10 colour (paper 30): MNIST has four times
    the images of the 12,000-image CIFAR-10 subset this is tuned for, and its
    0.3 budget is crossed in a few large steps;
  * ``step_size`` None -> max(1/255, 2.5 eps / steps) (Madry et al.'s usual
    2.5 eps / steps, at least the paper's 1/255): 2/255 at the colour default
    (8/255, 10 steps), 0.1875 on MNIST (0.3, 4 steps);
    ``--steps 30 --step-size 1/255`` is the paper's;
  * eps defaults per dataset (0.3 greyscale, 8/255 colour, the project's
    convention); ``--eps 2/255`` gives the paper's headline setting;
  * ``normalize_grads`` (off in the paper) optionally scales each checkpoint's
    per-image gradient to unit mean |g| before averaging, so late checkpoints
    with steep input gradients do not dominate the sign;
  * VR's inner steps draw their checkpoint from the run's key and use that
    checkpoint's own class centres (the released SEP-FA-VR script reuses the
    last checkpoint's centres in the inner loop).
Measured cost of the defaults (this 2-core CPU shared with other jobs, load
~9): 2,000 MNIST images took 58-108 s (training 15-28 s, attack 38-70 s;
33 s user CPU), 2,000 CIFAR-10 images 135-242 s (training 16-33 s, attack
113-198 s); an image-gradient of the width-16 small-cnn costs ~0.7 ms of CPU
time on 28x28x1 and ~0.9 ms on 32x32x3. Extrapolated: full MNIST (50,000)
~15 min of CPU time (21-35 min wall at that load), 12,000 CIFAR-10 images
~10 min of CPU time (13-22 min wall at that load).
The surrogate's standardisation statistics come from the clean training data.
Pixels are rounded to uint8 within the budget (``quantize_to_budget``).

Resumable: the trained checkpoints are saved to ``task.workdir`` once
training ends (flat arrays, ``np.savez``), and the protected images every
minute; ``--resume`` continues from both. Each batch's result depends only
on the key, the checkpoints and the batch, so a resumed run writes the same
bytes as an uninterrupted one.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ntga.train.inputs import channel_stats, standardize
from ntga.models import MODELS, get_model
from ntga.methods.surrogate import refuse_victim_only
from ntga import workfiles
from ntga.errors import UserInputError
from ntga.options import check_choice
from ntga.methods.base import MethodSpec, Protected, ProtectTask, grey_or_colour_eps
from ntga.methods.sep_surrogate import (Checkpoints, class_centres, init_variables, load_checkpoints, make_predict,
                                        model_variables, pad_to, readout_features, save_checkpoints,
                                        train_with_checkpoints)
from ntga.pixels import ascent_step, linf_box, quantize_to_budget, to_float

CHECKPOINT_FILE = "sep_checkpoints.npz"
PROGRESS_FILE = "sep_progress.npz"
SAVE_EVERY_S = 60.0  # how often protected batches are written to the work directory
_CPU_WIDTH = 16  # small-cnn width used when surrogate_width is not given


@dataclass(frozen=True)
class SepConfig:
    """Settings of ``sep`` (paper values in brackets; see the module docstring).

    Attributes:
      eps: L-inf budget (default 0.3 greyscale, 8/255 colour) [2/255, 8/255].
      steps: signed-gradient steps per image (None: 4 greyscale, 10 colour) [30].
      step_size: alpha (None: max(1/255, 2.5 eps / steps)) [1/255].
      checkpoints: ensemble size n, evenly spaced over training [15].
      epochs: surrogate training epochs [120].
      surrogate: a ntga.models name [resnet18].
      surrogate_width: the model's width attribute (None: 16 for small-cnn, else the model's default).
      surrogate_lr: peak learning rate (None: the model's recipe).
      train_batch_size: surrogate training batch size [128].
      feature_alignment: SEP-FA: align penultimate features with the target class's mean feature.
      vr_inner_steps: variance-reduction inner steps M (0: off) [15 in SEP-FA-VR].
      normalize_grads: scale each checkpoint's per-image gradient to unit mean |g| before averaging [off].
      target_shift: the attack's target is (y + target_shift) mod K (None: K // 2) [5 for K = 10].
      attack_batch_size: images attacked together (fixed shape; the last batch is padded).
    """

    eps: float | None = None
    steps: int | None = None
    step_size: float | None = None
    checkpoints: int = 5
    epochs: int = 5
    surrogate: str = "small-cnn"
    surrogate_width: int | None = None
    surrogate_lr: float | None = None
    train_batch_size: int = 128
    feature_alignment: bool = False
    vr_inner_steps: int = 0
    normalize_grads: bool = False
    target_shift: int | None = None
    attack_batch_size: int = 256

    def __post_init__(self):
        if self.eps is not None and not 0.0 < self.eps <= 1.0:
            raise UserInputError(f"--eps must be in (0, 1], got {self.eps}")
        if self.step_size is not None and not 0.0 < self.step_size <= 1.0:
            raise UserInputError(f"--step-size must be in (0, 1], got {self.step_size}")
        if self.steps is not None and (not isinstance(self.steps, (int, np.integer)) or self.steps < 1):
            raise UserInputError(f"--steps must be an integer >= 1, got {self.steps!r}")
        for name, low in (("checkpoints", 1), ("epochs", 1), ("train_batch_size", 1),
                          ("attack_batch_size", 1), ("vr_inner_steps", 0)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
                raise UserInputError(f"{name} must be an integer >= {low}, got {value!r}")
        check_choice("surrogate", self.surrogate, MODELS)
        if self.surrogate_width is not None and (not isinstance(self.surrogate_width, (int, np.integer))
                                                 or self.surrogate_width < 1):
            raise UserInputError(f"surrogate_width must be a positive integer or none, got {self.surrogate_width!r}")
        if self.surrogate_lr is not None and not self.surrogate_lr > 0:
            raise UserInputError(f"surrogate_lr must be > 0, got {self.surrogate_lr}")
        if self.target_shift is not None and not isinstance(self.target_shift, (int, np.integer)):
            raise UserInputError(f"target_shift must be an integer or none, got {self.target_shift!r}")


def _resolve(config: SepConfig, image_shape: tuple[int, ...], num_images: int | None) -> SepConfig:
    num_channels = image_shape[-1]
    eps = grey_or_colour_eps(config.eps, num_channels)
    steps = config.steps if config.steps is not None else (4 if num_channels == 1 else 10)
    step = config.step_size if config.step_size is not None else max(1 / 255, 2.5 * eps / steps)
    width = config.surrogate_width
    if width is None and config.surrogate == "small-cnn":
        width = _CPU_WIDTH
    return replace(config, eps=eps, steps=steps, step_size=step, surrogate_width=width)


# ----------------------------------------------------------------------------- the attack
# One checkpoint per jitted call, loops in Python (see ntga.methods.sep_surrogate for why).


@functools.lru_cache(maxsize=8)
def make_target_grad(module, spec, feature_alignment: bool, normalize: bool):
    """Jitted ``grad(tree, centres [K, D], x [B,H,W,C], target int [B], mean, std) -> [B,H,W,C]``.

    The gradient, in pixel units, of one checkpoint's targeted loss: the
    cross-entropy of ``target``, or with ``feature_alignment`` half the squared
    distance between the penultimate features and ``centres[target]``. The loss
    is summed over the batch, so each image's gradient is that of its own loss.
    With ``normalize`` each image's gradient is scaled to unit mean |g|.
    """

    def loss(tree, centres, x, target, mean, std):
        xs = standardize(x, mean, std)
        variables = model_variables(spec, tree)
        if feature_alignment:
            feats, _ = readout_features(module, variables, xs)
            return 0.5 * jnp.sum(jnp.square(feats.astype(jnp.float32) - centres[target]))
        logits = module.apply(variables, xs, train=False).astype(jnp.float32)
        return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), target[:, None], axis=-1))

    def grad(tree, centres, x, target, mean, std):
        g = jax.grad(loss, argnums=2)(tree, centres, x, target, mean, std)
        if normalize:
            scale = jnp.mean(jnp.abs(g), axis=(1, 2, 3), keepdims=True)
            g = g / jnp.maximum(scale, 1e-20)
        return g

    return jax.jit(grad)


@jax.jit
def _mean(grads: list[jax.Array]) -> jax.Array:
    return sum(grads[1:], grads[0]) / len(grads)


@jax.jit
def _signed_step(x, direction, lo, hi, alpha):
    """x - alpha * sign(direction), projected onto the budget box [lo, hi] (already inside [0, 1])."""
    return jnp.clip(x - ascent_step(direction, alpha, "linf"), lo, hi)


@jax.jit
def _vr_update(acc, g_inner, g_k, g_ens):
    """SVRE's variance-reduced accumulation: G + g_k(x'') - (g_k(x') - g_ens(x'))."""
    return acc + g_inner - (g_k - g_ens)


@functools.partial(jax.jit, static_argnames=("eps",))
def _box(x_uint8, eps):
    x0 = to_float(x_uint8, jnp.float32)
    return (x0, *linf_box(x0, eps))


@functools.partial(jax.jit, static_argnames=("eps",))
def _quantize(x, x0, eps):
    return quantize_to_budget(x, x0, eps, "linf")


def sep_attack(grad, trees: list, centres: jax.Array, x_uint8, target, key: jax.Array, mean, std,
               config: SepConfig) -> jax.Array:
    """SEP's targeted ensemble attack on one batch.

    Args:
      grad: from :func:`make_target_grad`.
      trees: the n checkpoints' variables (``{"params", "batch_stats"}`` each).
      centres: [n, K, D] class-centre features per checkpoint (ignored, any [n, K, 1], for the CE loss).
      x_uint8: [B, H, W, C] clean images.
      target: int [B] target classes.
      key: PRNG key of this batch (variance reduction's checkpoint draws).
      mean, std: [C] standardisation statistics of the surrogate's training data.
      config: a resolved SepConfig (eps, step_size, steps, vr_inner_steps).

    Returns:
      uint8 [B, H, W, C] protected images within ``config.eps`` (L-inf) of ``x_uint8``.
    """
    eps, alpha = float(config.eps), float(config.step_size)
    x0, lo, hi = _box(jnp.asarray(x_uint8), eps)
    target = jnp.asarray(target)
    n = len(trees)
    x = x0
    for t in range(config.steps):
        each = [grad(trees[i], centres[i], x, target, mean, std) for i in range(n)]
        g_ens = _mean(each)
        direction = g_ens
        if config.vr_inner_steps:
            xv, acc = x, jnp.zeros_like(x)
            for m in range(config.vr_inner_steps):
                k = int(jax.random.randint(jax.random.fold_in(jax.random.fold_in(key, t), m), (), 0, n))
                acc = _vr_update(acc, grad(trees[k], centres[k], xv, target, mean, std), each[k], g_ens)
                xv = _signed_step(xv, acc, lo, hi, alpha)
            direction = acc
        x = _signed_step(x, direction, lo, hi, alpha)
    return _quantize(x, x0, eps)


# ----------------------------------------------------------------------------- the method


def _surrogate(task: ProtectTask, config: SepConfig, x_train, y_train, key, spec, module) -> Checkpoints:
    """The trained checkpoints: loaded from the work directory on resume, else trained (and saved)."""
    path = None if task.workdir is None else Path(task.workdir) / CHECKPOINT_FILE
    if task.resume and path is not None:
        template = init_variables(module, x_train.shape[1:], key)
        saved = load_checkpoints(path, jax.device_get(template), config.checkpoints)
        if saved is not None:
            return saved
    ckpts = train_with_checkpoints(module, spec, x_train, y_train, task.num_classes, epochs=config.epochs,
                                   batch_size=config.train_batch_size, count=config.checkpoints, key=key,
                                   lr=config.surrogate_lr, progress=task.progress)
    if path is not None:
        save_checkpoints(path, ckpts)
    return ckpts


def _load_progress(task: ProtectTask) -> np.ndarray:
    """Protected images [done, H, W, C] from an interrupted run (empty when none or not resuming)."""
    path = None if task.workdir is None else Path(task.workdir) / PROGRESS_FILE
    empty = np.zeros((0, *task.x.shape[1:]), np.uint8)
    saved = workfiles.load_arrays(path) if task.resume and path is not None else None
    if saved is None:
        return empty
    done = saved.get("x", np.zeros(0))
    if done.dtype != np.uint8 or done.shape[1:] != task.x.shape[1:] or done.shape[0] > task.x.shape[0]:
        raise UserInputError(f"{path} does not belong to this run ({done.dtype}{list(done.shape)}); "
                             "remove it to start the attack over")
    return done


def _save_progress(task: ProtectTask, x_done: np.ndarray) -> None:
    if task.workdir is not None:
        workfiles.save_arrays(Path(task.workdir) / PROGRESS_FILE, x=x_done)


def protect_sep(task: ProtectTask, config: SepConfig, key: jax.Array) -> Protected:
    """Targeted signed-gradient perturbations averaged over a surrogate's training checkpoints."""
    k = task.num_classes
    shift = (k // 2) if config.target_shift is None else int(config.target_shift)
    if shift % k == 0:
        raise UserInputError(f"target_shift {shift} is a multiple of the {k} classes: the target would be "
                             "the true label; accepted: any integer not divisible by K")
    spec = get_model(config.surrogate)
    refuse_victim_only(config.surrogate, spec)
    overrides = {} if config.surrogate_width is None else {"width": int(config.surrogate_width)}
    module = spec.build(k, **overrides)
    x_train = np.concatenate([task.x, task.x_rest])
    y_train = np.concatenate([task.y, task.y_rest]).astype(np.int32)
    k_train, k_attack = jax.random.split(key)

    t0 = time.perf_counter()
    ckpts = _surrogate(task, config, x_train, y_train, k_train, spec, module)
    t_train = time.perf_counter() - t0
    trees = [jax.device_put(jax.tree.map(lambda a, i=i: a[i], ckpts.variables)) for i in range(ckpts.count)]
    mean, std = (jnp.asarray(a) for a in channel_stats(x_train))
    bsz = min(config.attack_batch_size, task.x.shape[0])
    centres = (class_centres(module, spec, trees, x_train, y_train, k, mean, std, bsz)
               if config.feature_alignment else jnp.zeros((ckpts.count, k, 1), jnp.float32))

    grad = make_target_grad(module, spec, bool(config.feature_alignment), bool(config.normalize_grads))
    n = task.x.shape[0]
    target = ((task.y + shift) % k).astype(np.int32)
    done = _load_progress(task)
    out = np.empty_like(task.x)
    out[:done.shape[0]] = done
    start = done.shape[0]
    last_save = time.monotonic()
    bar = tqdm(total=n, initial=start, desc="sep", unit="img", disable=not task.progress, leave=False)
    while start < n:
        stop = min(start + bsz, n)
        # Batch b's randomness (VR's checkpoint draws) is fold_in(key, b): independent of resumes.
        batch_key = jax.random.fold_in(k_attack, start // bsz)
        x_adv = sep_attack(grad, trees, centres, pad_to(task.x[start:stop], bsz), pad_to(target[start:stop], bsz),
                           batch_key, mean, std, config)
        out[start:stop] = np.asarray(x_adv)[:stop - start]
        bar.update(stop - start)
        start = stop
        if start < n and time.monotonic() - last_save > SAVE_EVERY_S:
            _save_progress(task, out[:start])
            last_save = time.monotonic()
    bar.close()
    t_attack = time.perf_counter() - t0 - t_train

    info = _diagnostics(make_predict(module, spec), trees, mean, std, out, task, target, bsz)
    info.update(surrogate_width=config.surrogate_width, checkpoint_steps=ckpts.steps.tolist(),
                surrogate_final_train_acc=float(ckpts.train_acc[-1]), target_shift=shift,
                # Phase wall times (this session's work only: 0 s of training when resumed).
                surrogate_train_s=round(t_train, 2), attack_s=round(t_attack, 2))
    return Protected(x=out, y=task.y.copy(), info=info)


def _diagnostics(predict, trees, mean, std, poisons, task: ProtectTask, target, bsz) -> dict:
    """How the checkpoints see the poisons (and, if there is one, the held-out set)."""

    def predictions(x):  # [n, N]
        return np.stack([np.concatenate([np.asarray(predict(tree, pad_to(x[i:i + bsz], bsz), mean, std))
                                         [:x[i:i + bsz].shape[0]] for i in range(0, x.shape[0], bsz)])
                         for tree in trees])

    on_poisons = predictions(poisons)
    info = {
        # The paper's diagnostic: share of (checkpoint, image) pairs classified as the attack's target.
        "poisons_predicted_as_target": float(np.mean(on_poisons == target[None, :])),
        "poisons_predicted_correctly": float(np.mean(on_poisons == task.y[None, :])),
    }
    if task.x_target.shape[0]:
        on_held_out = predictions(task.x_target)
        info["checkpoint_heldout_acc"] = [float(a) for a in np.mean(on_held_out == task.y_target[None, :], axis=1)]
    return info


SPECS = {
    "sep": MethodSpec(
        name="sep", summary="targeted attack averaged over one surrogate's training checkpoints "
                            "(Chen et al., ICLR 2023)",
        config_type=SepConfig, protect=protect_sep, resolve=_resolve, budget_norm="linf"),
}
