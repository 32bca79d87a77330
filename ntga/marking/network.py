"""The marking network phi_0: a victim trained in-project on the owner's clean data, cached by content hash.

Radioactive marking (Sablayrolles et al., ICML 2020) moves each image's
features, under a network trained on clean data, along its class's carrier.
Here that network is any registered victim (``ntga.models``) trained with the
project's one trainer (``ntga.train.train_and_evaluate``, the model's own
recipe), so the marking net is exactly what ``defenses.evaluate`` would train.

Training costs minutes at MNIST scale, so the result is cached as a saved model
(:mod:`ntga.models.saved`) under ``<cache>/marking-nets/<hash>/`` (the dataset
cache's folder: ``$NTGA_CACHE_DIR`` or ``~/.cache/ntga``), where ``<hash>`` is
the sha256 of everything that determines the weights: the images and labels
(bytes), the model and its options, the training recipe, the key, the library
version. A rerun with the same inputs loads it instead of retraining. The
cached network is part of the secret (it is copied into the key directory);
the cache folder is private to the user (created with mode 0700).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntga.data.cache import resolve_cache_dir
from ntga.methods.surrogate import readout_features, readout_layer
from ntga.models import get_model
from ntga.models.saved import SavedModel, load_model, module_overrides, save_model
from ntga.train import TrainConfig, train_and_evaluate
from ntga.train.inputs import channel_stats

CACHE_KIND = "marking-nets"
EVAL_IMAGES = 1000  # training images the marking net is scored on when there is no held-out target set


def _version() -> str:
    try:
        return metadata.version("ntga-jax")
    except metadata.PackageNotFoundError:
        return "unknown"


def content_hash(model: str, options: Mapping[str, Any], config: TrainConfig, key: jax.Array, x: np.ndarray,
                 y: np.ndarray, num_classes: int) -> str:
    """sha256 of everything that determines the marking network's weights."""
    h = hashlib.sha256()
    head = {"model": model, "options": {k: str(v) for k, v in sorted(options.items())},
            "config": dataclasses.asdict(config), "num_classes": int(num_classes), "shape": list(x.shape),
            "key": np.asarray(jax.random.key_data(key)).tolist(), "ntga": _version(), "jax": jax.__version__}
    h.update(json.dumps(head, sort_keys=True).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(np.asarray(y, np.int64)).tobytes())
    return h.hexdigest()


def train_marking_net(model: str, options: Mapping[str, Any], config: TrainConfig, x: np.ndarray, y: np.ndarray,
                      num_classes: int, class_names: Sequence[str], key: jax.Array, *,
                      x_eval: np.ndarray | None = None, y_eval: np.ndarray | None = None,
                      cache: bool = True, progress: bool = False,
                      log: Callable[[str], None] = print
                      ) -> tuple[SavedModel, dict[str, Any], Callable[[Path], Any]]:
    """Trains (or loads from the cache) the marking network on clean uint8 images ``x`` [N, H, W, C].

    Args:
      model, options: the victim and its module options.
      config: the training recipe (``None`` fields: the model's defaults).
      x, y: the owner's clean training images and labels.
      num_classes, class_names: K and the names.
      key: the training key.
      x_eval, y_eval: held-out images to score it on (default: the first training images).
      cache: read and write the content-hash cache.
      progress: show the trainer's progress bar.

    Returns:
      The network as a :class:`SavedModel`, facts for the manifest (hash, accuracy, cached or not),
      and ``write(dir)``, which saves it as a saved-model directory (for the key).
    """
    digest = content_hash(model, options, config, key, x, y, num_classes)
    root = resolve_cache_dir() / CACHE_KIND
    where = root / digest
    if cache and (where / "model.json").is_file():
        try:
            net = load_model(where)
            if net.meta.get("data_fingerprint", {}).get("content_hash") == digest:
                log(f"marking network: loaded from the cache {where}")
                return net, {"hash": digest, "cached": True, "eval_acc": net.meta.get("eval_acc"),
                             "eval_on": net.meta.get("eval_on")}, functools.partial(_copy, where)
        except Exception as err:  # noqa: BLE001 - a damaged cache entry is retrained, never trusted
            log(f"marking network: discarding the unreadable cache entry {where} ({err})")
    eval_on = "held-out target set"
    if x_eval is None or len(x_eval) == 0:
        x_eval, y_eval, eval_on = x[:EVAL_IMAGES], y[:EVAL_IMAGES], "training images"
    log(f"marking network: training {model} on {len(x)} clean images ({config.epochs} epochs)")
    result = train_and_evaluate(model, x, y, x_eval, y_eval, config, key, progress=progress,
                                num_classes=num_classes, model_kwargs=module_overrides(options))
    resolved = config.resolved(get_model(model))
    mean, std = channel_stats(x) if resolved.standardize else (None, None)
    fingerprint = {"content_hash": digest, "num_train_images": int(len(x)),
                   "train_images_sha256": hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()}
    extra = {"eval_acc": float(result.final_test_acc), "eval_on": eval_on, "role": "radioactive marking network"}

    def save(path: Path) -> Path:
        return save_model(path, model=model, options=options, num_classes=num_classes, class_names=class_names,
                          input_shape=x.shape[1:], variables=result.variables, mean=mean, std=std,
                          data_fingerprint=fingerprint, train_config=dataclasses.asdict(resolved), extra=extra)

    if cache:
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = root / f".{digest}.partial-{os.getpid()}-{secrets.token_hex(4)}"
            save(tmp)
            shutil.rmtree(where, ignore_errors=True)
            os.replace(tmp, where)
            net = load_model(where)
        except OSError as err:
            log(f"marking network: could not cache it in {root} ({err}); continuing without the cache")
            cache = False
    if not cache:
        with tempfile.TemporaryDirectory(prefix="ntga-marking-") as tmp_root:
            net = load_model(save(Path(tmp_root) / "net"))
    return net, {"hash": digest, "cached": False, "eval_acc": extra["eval_acc"], "eval_on": eval_on}, save


def _copy(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest)


def feature_fn(net: SavedModel) -> Callable[[jax.Array], jax.Array]:
    """``phi(x) -> [B, D]`` penultimate features of pixel-unit float images [B, H, W, C] (pure, eval mode)."""

    def phi(x):
        return readout_features(net.module, net.variables, net.standardize(x))[0].astype(jnp.float32)

    return phi


def classifier_rows(net: SavedModel) -> np.ndarray:
    """float64 [K, D] rows of the readout (``logits = features @ rows.T + bias``)."""
    kernel, _ = readout_layer(net.module, net.variables, net.input_shape)
    return np.asarray(kernel, np.float64).T


def features(net: SavedModel, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """float64 [N, D] features of uint8 (or [0, 1] float) images, in batches."""
    from ntga.pixels import as_float

    phi = jax.jit(feature_fn(net))
    out = []
    for start in range(0, len(x), batch_size):
        out.append(np.asarray(phi(as_float(jnp.asarray(x[start:start + batch_size]))), np.float64))
    return np.concatenate(out) if out else np.zeros((0, 0))


__all__ = ["classifier_rows", "content_hash", "feature_fn", "features", "train_marking_net"]
