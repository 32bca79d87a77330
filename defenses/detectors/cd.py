"""Cognitive Distillation (Huang et al., "Distilling Cognitive Backdoor Patterns within an Image",
ICLR 2023; github HanxunH/CognitiveDistillation).

For every image x [H, W, C] in [0, 1] a one-channel mask m = (tanh(w) + 1) / 2 [H, W, 1]
(w starts at 1) is learned so that the masked image keeps the model's output::

    x' = x * m + (1 - m) * delta       delta: a random solid colour [C], redrawn every step
    L(w) = mean_j |f(x')_j - f(x)_j| + alpha * ||m||_1 + beta * TV(m)
    TV(m) = (sum (m[i+1, j] - m[i, j])^2 + sum (m[i, j+1] - m[i, j])^2) / (H * W)

with f the frozen model's logits (CD-L) or its penultimate features (CD-F), Adam
with betas (0.1, 0.1) for ``steps`` steps (default 100). The paper's defaults:
CD-L alpha 0.01, beta 1 (its README example uses 10), lr 0.1; CD-F alpha 0.001,
beta 10, lr 0.05. The model is the one trained on the suspect data
(:mod:`defenses.detectors.model`).

Score: the paper flags images whose distilled pattern is small (a backdoor
trigger or shortcut is all the model needs), so the suspicion score is the
negated mean of the final mask, ``-||m||_1 / (H * W)`` in [-1, 0]: higher = more
suspicious, as every detector here.

Batched and jitted: one ``lax.scan`` over the steps for a whole batch of images.
Images are independent: Adam is per coordinate, the objective a sum over images,
and row ``r``'s colours come from its own key ``fold_in(key, r)`` (then
``fold_in(., step)``), never from its batch or its place in it; so the batch size
changes nothing but speed (up to float rounding). Deterministic given the key.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntga.errors import UserInputError
from ntga.methods.surrogate import padded_batches
from ntga.options import check_choice
from ntga.pixels import as_float

VARIANTS = ("logits", "features")
# (alpha, beta, lr) per variant: the paper's defaults.
PAPER_DEFAULTS = {"logits": (0.01, 1.0, 0.1), "features": (0.001, 10.0, 0.05)}


@dataclasses.dataclass(frozen=True)
class CDConfig:
    """Cognitive Distillation settings (``--detector cd@variant=features,steps=50``).

    Attributes:
        variant: "logits" (CD-L) or "features" (CD-F, penultimate features).
        steps: Adam steps per image (paper: 100).
        alpha: weight of the mask's L1 norm (None: 0.01 for logits, 0.001 for features).
        beta: weight of the total variation (None: 1 for logits, 10 for features).
        lr: Adam step size (None: 0.1 for logits, 0.05 for features).
        batch_size: images optimised together (speed only).
    """

    variant: Literal["logits", "features"] = "logits"
    steps: int = 100
    alpha: float | None = None
    beta: float | None = None
    lr: float | None = None
    batch_size: int = 256

    def __post_init__(self):
        check_choice("cd: variant", self.variant, VARIANTS)
        if self.steps < 1 or self.batch_size < 1:
            raise UserInputError("cd: steps and batch_size must be positive")
        for name in ("alpha", "beta", "lr"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise UserInputError(f"cd: {name} must be >= 0, got {value}")

    def resolved(self) -> "CDConfig":
        alpha, beta, lr = PAPER_DEFAULTS[self.variant]
        return dataclasses.replace(self, alpha=alpha if self.alpha is None else self.alpha,
                                   beta=beta if self.beta is None else self.beta, lr=lr if self.lr is None else self.lr)


def mask_of(w: jax.Array) -> jax.Array:
    return 0.5 * (jnp.tanh(w) + 1.0)


def total_variation(m: jax.Array) -> jax.Array:
    """[B, H, W, 1] -> [B]: squared differences of neighbours, divided by C * H * W."""
    dh = jnp.sum(jnp.square(m[:, 1:] - m[:, :-1]), axis=(1, 2, 3))
    dw = jnp.sum(jnp.square(m[:, :, 1:] - m[:, :, :-1]), axis=(1, 2, 3))
    return (dh + dw) / (m.shape[1] * m.shape[2] * m.shape[3])


def make_distill(f: Callable[[jax.Array], jax.Array], cfg: CDConfig) -> Callable:
    """``distill(x [B,H,W,C] float, keys [B]) -> (mask [B,H,W,1], objective [steps] mean over the batch)`` (pure).

    ``keys`` holds one PRNG key per image: image ``j``'s colour at step ``s`` is drawn from
    ``fold_in(keys[j], s)``, so its mask does not depend on the other images of the batch.
    ``objective[s]`` is the batch mean of L before update ``s`` (for tests and diagnostics).
    """
    cfg = cfg.resolved()
    tx = optax.adam(cfg.lr, b1=0.1, b2=0.1)

    def distill(x, keys):
        b, h, w_, c = x.shape
        target = jax.lax.stop_gradient(f(x))

        def objective(w, delta):
            m = mask_of(w)
            out = f(x * m + (1.0 - m) * delta)
            per_image = (jnp.mean(jnp.abs(out - target), axis=-1) + cfg.alpha * jnp.sum(jnp.abs(m), axis=(1, 2, 3))
                         + cfg.beta * total_variation(m))
            return jnp.sum(per_image), per_image

        def step(carry, i):
            w, opt_state = carry
            colour = lambda k: jax.random.uniform(jax.random.fold_in(k, i), (c,), x.dtype)
            delta = jax.vmap(colour)(keys).reshape(b, 1, 1, c)
            (_, per_image), grad = jax.value_and_grad(objective, has_aux=True)(w, delta)
            updates, opt_state = tx.update(grad, opt_state, w)
            return (optax.apply_updates(w, updates), opt_state), jnp.mean(per_image)

        w0 = jnp.ones((b, h, w_, 1), x.dtype)
        (w, _), history = jax.lax.scan(step, (w0, tx.init(w0)), jnp.arange(cfg.steps))
        return mask_of(w), history

    return distill


def cd_scores(f: Callable[[jax.Array], jax.Array], x: np.ndarray, key: jax.Array, cfg: CDConfig
              ) -> tuple[np.ndarray, np.ndarray]:
    """Suspicion scores ``-mean(mask)`` [N] and the mean objective per step of each batch [batches, steps].

    Args:
        f: the frozen model's logits or features of images in [0, 1] (pure, jittable).
        x: [N, H, W, C] uint8 or float [0, 1].
        key: row r draws its colours from ``fold_in(key, r)`` (whatever the batch size).
        cfg: the settings.
    """
    n = int(x.shape[0])
    distill = make_distill(f, cfg)
    # The per-row keys are derived inside the jitted call, from the global row indices.
    run = jax.jit(lambda xb, rows: distill(xb, jax.vmap(lambda r: jax.random.fold_in(key, r))(rows)))
    idx, _ = padded_batches(n, min(cfg.batch_size, n))
    xf = jnp.asarray(as_float(np.asarray(x)), jnp.float32)
    scores, histories = [], []
    for rows in jnp.asarray(idx):
        mask, history = run(xf[rows], rows)
        scores.append(-np.asarray(jnp.mean(mask, axis=(1, 2, 3)), np.float64))
        histories.append(np.asarray(history, np.float64))
    return np.concatenate(scores)[:n], np.stack(histories)


__all__ = ["CDConfig", "PAPER_DEFAULTS", "cd_scores", "make_distill", "mask_of", "total_variation"]
