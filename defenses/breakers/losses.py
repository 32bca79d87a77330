"""Active-Passive Loss (Ma et al., "Normalized Loss Functions for Deep Learning
with Noisy Labels", ICML 2020), used as a robust-loss breaker.

APL = alpha * active + beta * passive. The active term is the normalised cross
entropy NCE = CE(q, p) / sum_j CE(e_j, p); the passive term is the reverse cross
entropy RCE = -sum_c p_c log q_c with log 0 replaced by A = -4 (the paper's
choice), or MAE = sum_c |p_c - q_c|. The paper's CIFAR-10 setting is
NCE+RCE with alpha = beta = 1.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from defenses.breakers._labels import soft_labels

# log(0) is replaced by this in the reverse cross entropy (Ma et al. 2020, Sec. 4).
LOG_ZERO = -4.0


def apl_per_example(
    logits: jax.Array, labels: jax.Array, alpha: float = 1.0, beta: float = 1.0, passive: str = "rce"
) -> jax.Array:
    """Per-example APL.

    Args:
        logits: [B, k].
        labels: [B] integers or [B, k] soft labels (rows summing to 1).
        alpha, beta: weights of the active (NCE) and passive terms.
        passive: "rce" (reverse cross entropy) or "mae" (mean absolute error).

    Returns:
        [B] losses (finite for any finite logits).
    """
    num_classes = logits.shape[-1]
    q = soft_labels(labels, num_classes, logits.dtype)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    # NCE: the denominator is the sum of CE over all k labels, >= k * log k > 0.
    nce = jnp.sum(q * log_p, axis=-1) / jnp.sum(log_p, axis=-1)
    p = jnp.exp(log_p)
    if passive == "rce":
        log_q = jnp.maximum(jnp.log(jnp.maximum(q, jnp.finfo(q.dtype).tiny)), LOG_ZERO)
        passive_term = -jnp.sum(p * log_q, axis=-1)
    elif passive == "mae":
        passive_term = jnp.sum(jnp.abs(p - q), axis=-1)
    else:
        raise ValueError(f"passive must be 'rce' or 'mae', got {passive!r}")
    return alpha * nce + beta * passive_term


def make_apl_loss(alpha: float = 1.0, beta: float = 1.0, passive: str = "rce") -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Returns ``loss(logits [B, k], labels [B] or [B, k]) -> [B]`` per-example APL
    (the ``TrainHooks.loss_fn`` contract; the trainer takes the batch mean)."""

    def loss(logits, labels):
        return apl_per_example(logits, labels, alpha, beta, passive)

    return loss
