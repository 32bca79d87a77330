"""``random``: uniform noise within the budget, sample-wise or class-wise (baseline).

The simplest availability "attack" and the control every other method must
beat: each pixel moves by ``U(-eps, eps)``. Sample-wise noise is independent per
image and, as the literature finds, barely hurts a victim; class-wise noise
(one noise image per class, added to every image of that class) is a shortcut
a network can learn instead of the content, which is why it can work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from ntga.errors import UserInputError
from ntga.methods.base import MethodSpec, Protected, ProtectTask, grey_or_colour_eps
from ntga.pixels import quantize_to_budget, random_delta, to_float


@dataclass(frozen=True)
class RandomNoiseConfig:
    """Settings of ``random``.

    Attributes:
      eps: L-inf budget in [0, 1] pixel units (default 0.3 greyscale, 8/255 colour).
      noise: "sample-wise" (independent per image) or "class-wise" (one pattern per class).
    """

    eps: float | None = None
    noise: Literal["sample-wise", "class-wise"] = "sample-wise"

    def __post_init__(self):
        if self.eps is not None and not 0.0 < self.eps <= 1.0:
            raise UserInputError(f"--eps must be in (0, 1], got {self.eps}")
        if self.noise not in ("sample-wise", "class-wise"):
            raise UserInputError(f"noise must be sample-wise or class-wise, got {self.noise!r}")


def _resolve(config: RandomNoiseConfig, image_shape: tuple[int, ...], num_images: int | None) -> RandomNoiseConfig:
    num_channels = image_shape[-1]
    return RandomNoiseConfig(eps=grey_or_colour_eps(config.eps, num_channels), noise=config.noise)


def protect_random(task: ProtectTask, config: RandomNoiseConfig, key: jax.Array) -> Protected:
    """Adds ``U(-eps, eps)`` noise per pixel (per image, or one draw per class), rounded within budget."""
    eps = float(config.eps)
    shape = task.x.shape[1:]
    if config.noise == "class-wise":
        patterns = random_delta(key, (task.num_classes, *shape), jnp.float32, eps, "linf")
        delta = patterns[jnp.asarray(task.y)]
    else:
        delta = random_delta(key, task.x.shape, jnp.float32, eps, "linf")
    x = to_float(jnp.asarray(task.x), jnp.float32)
    x_adv = jnp.clip(x + delta, 0.0, 1.0)
    x_uint8 = np.asarray(quantize_to_budget(x_adv, x, eps, "linf"))
    return Protected(x=x_uint8, y=task.y.copy())


SPECS = {
    "random": MethodSpec(
        name="random", summary="uniform noise in the L-inf ball, sample-wise or class-wise (baseline)",
        config_type=RandomNoiseConfig, protect=protect_random, resolve=_resolve, budget_norm="linf"),
}
