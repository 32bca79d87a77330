"""``ntga``: Neural Tangent Generalization Attacks (Yuan & Wu, ICML 2021) as a method of the registry.

Projected gradient ascent of the NTK Gaussian process's loss on a held-out
target set, block by block: each block of ``block_size`` training images is
poisoned against the same target set (:func:`ntga.attack.make_block_attack`),
through the shared block runner (resume, ``--shard``, several devices).

Defaults follow the reference by image type (REFERENCE.md): greyscale data get
MNIST's eps 0.3 and t 64 for both surrogates; colour data CIFAR-10's eps 8/255
and t 4096 (fnn) / 8 (cnn). The step size defaults to the reference's
``1.1 * eps / steps``; ``steps=1`` with ``step_size=eps`` is the reference's
effective one-step attack.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from ntga.errors import UserInputError
from ntga.options import check_choice
from ntga.methods.base import MethodSpec, Protected, ProtectTask
from ntga.run.blocks import BlockJob

# Reference defaults (REFERENCE.md): MNIST eps 0.3, t 64 for both surrogates;
# CIFAR-10 eps 8/255, t 4096 (fnn) / 8 (cnn). Chosen by image type.
GREY_DEFAULTS = {"eps": 0.3, "t": {"fnn": 64.0, "cnn": 64.0}}
COLOUR_DEFAULTS = {"eps": 8 / 255, "t": {"fnn": 4096.0, "cnn": 8.0}}
# Target images per gradient chunk: the cnn kernel keeps [block, chunk, H, W]
# spatial covariances alive, the fnn one only [block, chunk].
DEFAULT_TARGET_CHUNK = {"fnn": 2000, "cnn": 64}
DEFAULT_BLOCK_SIZE = 512  # the reference's block of training examples poisoned together
DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class NTGAConfig:
    """Settings of NTGA; None means "the per-dataset default".

    Attributes:
      kernel: surrogate kernel, ``fnn`` (5 x Dense-Erf) or ``cnn`` (2 x Conv-ReLU), see ``ntga.kernels``.
      kernel_overrides: keyword overrides of the kernel (depth, activation, W_std, b_std, ...).
      eps: budget in [0, 1] pixel units (grey 0.3, colour 8/255).
      norm: ``linf`` (sign steps) or ``l2`` (per image, normalised-gradient steps).
      steps: PGD iterations.
      step_size: step length (None: 1.1 * eps / steps).
      random_start: start PGD at a random point of the budget ball.
      t: GP training time in the reference's units (grey 64; colour fnn 4096, cnn 8).
      block_size: training images poisoned together (None: 512, or all of them when fewer).
      target_chunk: target images per gradient chunk, a memory bound (None: fnn 2000, cnn 64).
      dtype: compute precision, ``float64`` (the reference's) or ``float32``.
    """

    kernel: str = "fnn"
    kernel_overrides: dict[str, Any] = field(default_factory=dict)
    eps: float | None = None
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = None
    random_start: bool = False
    t: float | None = None
    block_size: int | None = None
    target_chunk: int | None = None
    dtype: str = "float64"

    def __post_init__(self):
        check_choice("dtype", self.dtype, DTYPES)


def _attack_config(config: NTGAConfig):
    from ntga.attack import AttackConfig

    return AttackConfig(eps=config.eps, norm=config.norm, steps=config.steps, step_size=config.step_size,
                        t=config.t, random_start=config.random_start, target_chunk=config.target_chunk)


def _resolve(config: NTGAConfig, image_shape: tuple[int, ...], num_images: int | None) -> NTGAConfig:
    """Fills the per-dataset defaults (greyscale -> MNIST's, colour -> CIFAR-10's) and the step size."""
    defaults = GREY_DEFAULTS if image_shape[-1] == 1 else COLOUR_DEFAULTS
    block_size = config.block_size
    if block_size is None and num_images is not None:
        block_size = min(DEFAULT_BLOCK_SIZE, num_images)
    resolved = dataclasses.replace(
        config,
        kernel_overrides=dict(config.kernel_overrides),
        eps=defaults["eps"] if config.eps is None else config.eps,
        t=defaults["t"].get(config.kernel, defaults["t"]["fnn"]) if config.t is None else config.t,
        block_size=block_size,
        target_chunk=(DEFAULT_TARGET_CHUNK.get(config.kernel, 256) if config.target_chunk is None
                      else config.target_chunk),
    )
    # AttackConfig validates eps/steps/t/... and computes the default step size.
    return dataclasses.replace(resolved, step_size=_attack_config(resolved).step_size)


def _surrogate(config: NTGAConfig):
    """The kernel, the attack's settings and the compute dtype (float64 switches on JAX's x64 mode)."""
    from ntga.kernels import make

    kernel_fn = make(config.kernel, **config.kernel_overrides)
    dtype = {"float64": np.float64, "float32": np.float32}[config.dtype]
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    return kernel_fn, _attack_config(config), dtype


def _as_inputs(x: np.ndarray, y: np.ndarray, num_classes: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and int labels as the attack takes them: floats in [0, 1] and one-hot rows."""
    from ntga.attack import one_hot
    from ntga.pixels import to_float

    return to_float(x, dtype), one_hot(y, num_classes, dtype)


def _check(task: ProtectTask, config: NTGAConfig) -> None:
    """Refuses a missing target set and settings whose GP numbers are not finite, before anything is written.

    The attack's loss and gradient on the first block against one chunk of targets
    (the computation every PGD step does) must be finite: e.g. ``--t 1e300``
    overflows exp(t * eigenvalue) in the gradient. Only those rows are converted.
    """
    from ntga.attack import target_loss_and_grad
    from ntga.run.plan import BlockPlan

    if len(task.x_target) == 0:
        raise UserInputError("--target-size must be at least 1: NTGA ascends the GP's loss on a held-out target set")
    kernel_fn, attack_config, dtype = _surrogate(config)
    BlockPlan(len(task.x), config.block_size)  # a block size larger than the data is refused here
    n = min(config.block_size, len(task.x))
    m = min(attack_config.target_chunk, len(task.x_target))
    x, y = _as_inputs(task.x[:n], task.y[:n], task.num_classes, dtype)
    x_target, y_target = _as_inputs(task.x_target[:m], task.y_target[:m], task.num_classes, dtype)
    loss, grad = target_loss_and_grad(kernel_fn, attack_config, x, y, x_target, y_target)
    if not (np.isfinite(float(loss)) and bool(np.isfinite(np.asarray(grad)).all())):
        raise UserInputError(
            f"the attack's loss or gradient is not finite for these settings (kernel {config.kernel}, "
            f"t={config.t:g}, {config.dtype}; target loss {float(loss)!r} on the first block); use a smaller --t "
            "(the reference's values: 64 for greyscale data, 4096 (fnn) or 8 (cnn) for colour) or --dtype float64")


def _describe_block(index: int, s: dict[str, Any]) -> str:
    return (f"block {index} ({s['images']} images): surrogate GP's target accuracy clean "
            f"{100 * s['clean_target_acc']:.2f}% -> protected {100 * s['poisoned_target_acc']:.2f}%  (target loss "
            f"{s['loss_history'][0]:.4g} -> {s['loss_history'][-1]:.4g}, {s['seconds']:.1f}s)")


def protect_ntga(task: ProtectTask, config: NTGAConfig, key: jax.Array) -> Protected | None:
    """Poisons ``task.x`` block by block against the target set (None: other shards are still running)."""
    import time

    from ntga.attack import make_block_attack

    kernel_fn, attack_config, dtype = _surrogate(config)
    x, y = _as_inputs(task.x, task.y, task.num_classes, dtype)
    job = BlockJob(x=x, y=y, block_size=config.block_size,
                   shared=_as_inputs(task.x_target, task.y_target, task.num_classes, dtype))
    start = time.perf_counter()
    x, summary = task.blocks.run(job, make_block_attack(kernel_fn, attack_config), key, describe=_describe_block)
    if x is None:
        return None
    info = {
        "devices": [str(d) for d in (task.blocks.devices or jax.local_devices())],
        "gp_target_acc_clean_mean": summary.mean("clean_target_acc"),
        "gp_target_acc_poisoned_mean": summary.mean("poisoned_target_acc"),
        "blocks": summary.block_stats,
        "wall_time_s": float(sum(s["seconds"] for s in summary.block_stats)),  # the blocks' compute, all processes
        "wall_time_this_process_s": time.perf_counter() - start,
    }
    return Protected(x=x, y=task.y.copy(), info=info)


def _report(info: dict[str, Any]) -> str:
    """The surrogate's own before/after figures, printed after the output is written."""
    blocks = info["blocks"]
    sizes = sorted({int(s["images"]) for s in blocks if "images" in s})
    uneven = (f"; blocks of {sizes[-1]} images, the last of {sizes[0]}, whose figures are noisier"
              if len(sizes) > 1 else "")
    return (f"  Surrogate check (not a trained victim's accuracy): the NTK-GP fitted to one block scores "
            f"{100 * info['gp_target_acc_clean_mean']:.2f}% on the held-out targets when the block is clean and "
            f"{100 * info['gp_target_acc_poisoned_mean']:.2f}% when it is protected (mean over {len(blocks)} "
            f"blocks{uneven}).")


SPECS = {
    "ntga": MethodSpec(
        name="ntga",
        summary="Neural Tangent Generalization Attacks: PGD against an infinite-width NTK-GP's target loss "
                "(Yuan & Wu, ICML 2021)",
        config_type=NTGAConfig, protect=protect_ntga, resolve=_resolve, budget_norm="linf", check=_check,
        block_wise=True, info_prefix="", report=_report, uses_targets=True),
}
