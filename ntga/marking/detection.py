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

Black-box: only the suspect's outputs, and no use of the carriers. A model
trained on the marked images x~ has a lower loss on them than on their unmarked
originals x; the one-sided paired t-test of (loss on x - loss on x~) > 0 gives
the p-value. It is a membership test: it shows that the model saw the marked
images (rather than their originals), not that it carries the carriers. Its
null is a model trained on neither x nor x~ (e.g. on the unmarked rest of the
data), and even there it is only approximate: the marks are structured
perturbations, so a model that never saw them can still prefer one side. A
model trained on the originals x is no null control: it memorised x, so the
test leans the other way (p near 1). The white-box test is the calibrated,
carrier-specific one.

Every p-value is reported as ``p_value`` and its exact ``log10_p`` (computed in
log space, finite far below 1e-308). The one case float64 cannot resolve is a
cosine that rounds to 1: its p-value is then reported as the bound at the
largest float below 1, with ``log10_p_is_upper_bound: true``.
"""

from __future__ import annotations

import math
from dataclasses import replace as dataclass_replace
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
from ntga.train.core import per_example_losses as _per_example_losses
from ntga.train.config import cross_entropy

_BELOW_ONE = float(np.nextafter(1.0, 0.0))


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
    if not math.isfinite(log_p):  # every path above gives an exact finite log or a stated bound
        raise ArithmeticError(f"{test} test: log p is {log_p}")
    return {"test": test, "p_value": math.exp(log_p), "log10_p": log10(log_p),
            "key_sha256": key.hash, "model": str(model.path), "model_name": model.name,
            "num_classes": key.num_classes, **fields}


def cosine_log_pvalues(cosines: np.ndarray, d: int) -> tuple[list[float], list[bool]]:
    """Natural-log p-values of the cosines in d dimensions, and which of them are upper bounds.

    A cosine that rounds to 1 in float64 (true p below what float64 can resolve at the top of
    the range) gets the p-value of the largest float below 1, an upper bound on its true one.
    """
    log_ps, bound = [], []
    for c in np.asarray(cosines, np.float64):
        at_top = bool(c >= 1.0)
        log_ps.append(cosine_log_pvalue(_BELOW_ONE if at_top else float(c), d))
        bound.append(at_top)
    return log_ps, bound


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
    if not np.all(np.isfinite(cos)):
        raise UserInputError(f"the model {model.path} gives non-finite features or classifier rows (damaged "
                             "weights?); the white-box test cannot align it")
    log_ps, bound = cosine_log_pvalues(cos, d0)
    names = list(key.info.get("class_names") or model.class_names)
    per_class = [{"class": str(names[i]) if i < len(names) else str(i), "cosine": float(c),
                  "log10_p": log10(lp), "log10_p_is_upper_bound": b}
                 for i, (c, lp, b) in enumerate(zip(cos, log_ps, bound))]
    # Fisher's combination is increasing in every p_k, so bounds in give a bound out.
    return _result("white-box", fisher_log_pvalue(log_ps), key, model, cosines=[float(c) for c in cos],
                   per_class=per_class, feature_dim=d0, num_images=n, alignment_r2=r2,
                   combination="fisher", log10_p_is_upper_bound=any(bound))


def loss_fn(model: SavedModel):
    """Jitted ``loss(x uint8 [B, H, W, C], y int [B]) -> [B]`` softmax cross-entropy of the model (eval mode)."""
    @jax.jit
    def loss(variables, xb, yb):
        logits = dataclass_replace(model, variables=variables).logits(as_float(xb))
        return cross_entropy(logits, jax.nn.one_hot(yb, logits.shape[-1], dtype=jnp.float32))

    return lambda xb, yb: loss(model.variables, xb, yb)


def per_example_losses(model: SavedModel, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """float64 [N] softmax cross-entropy of the model (eval mode, its test-time views) on uint8 images."""
    return _per_example_losses(loss_fn(model), x, y, batch_size)


def black_box(key: MarkKey, model: SavedModel, max_pairs: int | None = None) -> dict[str, Any]:
    """The black-box test on the key's marked images and their originals (paired one-sided t-test)."""
    check_compatible(key, model)
    n = len(key.y) if max_pairs is None else min(int(max_pairs), len(key.y))
    if n < 2:
        raise UserInputError(f"the black-box test needs at least 2 marked images; the key holds {len(key.y)}")
    y = key.y[:n]
    loss = loss_fn(model)  # one compilation for both sets
    marked = _per_example_losses(loss, key.x_marked[:n], y, 256)
    original = _per_example_losses(loss, key.x_original[:n], y, 256)
    diff = original - marked
    if not np.all(np.isfinite(diff)):
        raise UserInputError(f"the model {model.path} has a non-finite loss on "
                             f"{int(np.sum(~np.isfinite(diff)))} of the {n} marked images or their originals "
                             "(damaged weights?); the black-box test needs finite losses")
    log_p, t = paired_t_log_pvalue(diff)
    extra = ({"t_statistic": float(t), "statistic": "paired t"} if t is not None else
             {"t_statistic": None, "statistic": "sign test (all paired differences are equal, so t is undefined)"})
    return _result("black-box", log_p, key, model, num_pairs=n, **extra,
                   mean_loss_marked=float(marked.mean()), mean_loss_original=float(original.mean()),
                   mean_loss_difference=float(diff.mean()),
                   shows="use of the marked images (membership), not the carriers")


__all__ = ["align_features", "aligned_cosines", "black_box", "check_compatible", "cosine_log_pvalues", "loss_fn",
           "per_example_losses", "white_box"]
