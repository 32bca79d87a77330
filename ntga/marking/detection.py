"""Detecting a radioactive mark in a trained classifier: the white-box and black-box tests.

White-box (Sablayrolles et al., ICML 2020, Sec. 4): the suspect's features
phi_t and the marking network's phi_0 on the same held-out images are aligned
by least squares, M = argmin ||phi_0(X) M - phi_t(X)||_F; the suspect's
classifier rows w_k (``logits = phi_t(x) . w_k + b_k``) are mapped into the
marking space (M w_k, since phi_t ~ phi_0 M), normalised, and compared with
the carriers: c_k = <M w_k / ||M w_k||, u_k>. Under the null (the model never
saw the mark) M w_k is independent of the secret u_k, so c_k is the cosine
with a uniformly random direction in d dimensions and p_k has an exact
incomplete-beta form (:func:`ntga.marking.stats.cosine_log_pvalue`); Fisher's
method combines the K classes.

Black-box: only the suspect's outputs. A model trained on the marked images
has a lower loss on them than on their unmarked originals; the one-sided
paired t-test of (loss on original - loss on marked) > 0 gives the p-value.
Its null is only approximate: the marks are structured perturbations, so even
a model that never saw them can prefer one side; the white-box test is the
calibrated one.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ntga.errors import UserInputError
from ntga.marking.key import MarkKey
from ntga.marking.network import classifier_rows, features
from ntga.marking.stats import cosine_log_pvalue, fisher_log_pvalue, log10, paired_t_log_pvalue
from ntga.models.saved import SavedModel
from ntga.pixels import as_float


def align_features(f_ref: np.ndarray, f_sus: np.ndarray) -> np.ndarray:
    """M = argmin ||f_ref M - f_sus||_F (least squares), float64 [D0, Dt]; f_ref [n, D0], f_sus [n, Dt]."""
    f_ref, f_sus = np.asarray(f_ref, np.float64), np.asarray(f_sus, np.float64)
    if f_ref.ndim != 2 or f_sus.ndim != 2 or len(f_ref) != len(f_sus):
        raise ValueError(f"need [n, D0] and [n, Dt] features, got {f_ref.shape} and {f_sus.shape}")
    return np.linalg.lstsq(f_ref, f_sus, rcond=None)[0]


def aligned_cosines(rows: np.ndarray, m: np.ndarray, carriers: np.ndarray) -> np.ndarray:
    """[K] cosines of the suspect's rows [K, Dt] mapped into marking space (rows @ M^T) with carriers [K, D0]."""
    mapped = np.asarray(rows, np.float64) @ np.asarray(m, np.float64).T
    mapped /= np.maximum(np.linalg.norm(mapped, axis=1, keepdims=True), 1e-300)
    u = np.asarray(carriers, np.float64)
    return np.sum(mapped * (u / np.linalg.norm(u, axis=1, keepdims=True)), axis=1)


def check_compatible(key: MarkKey, model: SavedModel) -> None:
    """One clear error when the key and the model cannot belong together."""
    if model.num_classes != key.num_classes:
        raise UserInputError(f"the key has {key.num_classes} classes but the model {model.path} has "
                             f"{model.num_classes}: it was not trained on the marked dataset's classes")
    shape = tuple(int(d) for d in key.info.get("image_shape", model.input_shape))
    if tuple(model.input_shape) != shape:
        raise UserInputError(f"the key marks {'x'.join(map(str, shape))} images but the model {model.path} takes "
                             f"{'x'.join(map(str, model.input_shape))}")


def _result(test: str, log_p: float, key: MarkKey, model: SavedModel, **fields: Any) -> dict[str, Any]:
    p = math.exp(log_p)
    return {"test": test, "p_value": p, "log10_p": log10(log_p) if math.isfinite(log_p) else -1e308,
            "key_sha256": key.hash, "model": str(model.path), "model_name": model.name,
            "num_classes": key.num_classes, **fields}


def white_box(key: MarkKey, model: SavedModel, x_heldout: np.ndarray) -> dict[str, Any]:
    """The white-box test on held-out uint8 images [n, H, W, C] (never marked, never trained on).

    Returns:
      ``{"test": "white-box", "p_value", "log10_p", "cosines" [K], "per_class": [{class, cosine,
      log10_p}], "feature_dim", "num_images", "alignment_r2", ...}``.
    """
    check_compatible(key, model)
    d0 = key.dim
    n = len(x_heldout)
    if n <= d0:
        raise UserInputError(f"the alignment needs more held-out images than the marking network's {d0} "
                             f"features; got {n} (use a larger test split or --num-images)")
    f0 = features(key.marking_net, x_heldout)
    ft = features(model, x_heldout)
    m = align_features(f0, ft)
    resid = ft - f0 @ m
    r2 = 1.0 - float(np.sum(resid ** 2) / max(np.sum((ft - ft.mean(0)) ** 2), 1e-300))
    cos = aligned_cosines(classifier_rows(model), m, key.carriers)
    log_ps = [cosine_log_pvalue(float(c), d0) for c in cos]
    names = list(key.info.get("class_names") or model.class_names)
    per_class = [{"class": str(names[i]) if i < len(names) else str(i), "cosine": float(c),
                  "log10_p": log10(lp) if math.isfinite(lp) else -1e308} for i, (c, lp) in enumerate(zip(cos, log_ps))]
    return _result("white-box", fisher_log_pvalue(log_ps), key, model, cosines=[float(c) for c in cos],
                   per_class=per_class, feature_dim=d0, num_images=n, alignment_r2=r2,
                   combination="fisher")


def per_example_losses(model: SavedModel, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """float64 [N] softmax cross-entropy of the model (eval mode) on uint8 images with int labels."""
    @jax.jit
    def loss(xb, yb):
        logits = model.logits(as_float(xb))
        return -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), yb[:, None], axis=1)[:, 0]

    out = [np.asarray(loss(jnp.asarray(x[i:i + batch_size]), jnp.asarray(y[i:i + batch_size], jnp.int32)))
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def black_box(key: MarkKey, model: SavedModel, max_pairs: int | None = None) -> dict[str, Any]:
    """The black-box test on the key's marked images and their originals (paired one-sided t-test)."""
    check_compatible(key, model)
    n = len(key.y) if max_pairs is None else min(int(max_pairs), len(key.y))
    if n < 2:
        raise UserInputError(f"the black-box test needs at least 2 marked images; the key holds {len(key.y)}")
    y = key.y[:n]
    marked = per_example_losses(model, key.x_marked[:n], y)
    original = per_example_losses(model, key.x_original[:n], y)
    diff = original - marked
    log_p, t = paired_t_log_pvalue(diff)
    return _result("black-box", log_p, key, model, num_pairs=n, t_statistic=float(t),
                   mean_loss_marked=float(marked.mean()), mean_loss_original=float(original.mean()),
                   mean_loss_difference=float(diff.mean()))


__all__ = ["align_features", "aligned_cosines", "black_box", "check_compatible", "per_example_losses", "white_box"]
