"""The marking network phi_0: a victim trained in-project on the owner's clean data, cached by content hash.

Radioactive marking (Sablayrolles et al., ICML 2020) moves each image's
features, under a network trained on clean data, along its class's carrier.
Here that network is any registered victim (``ntga.models``) trained with the
project's one trainer (``ntga.train.train_and_evaluate``, the model's own
recipe), so the marking net is exactly what ``defenses.evaluate`` would train.

The network is part of the secret: its training key (init, batch order,
augmentation) is derived from the run's key *and* the 256-bit secret
(:func:`marking_key`), so the public settings of a run (seed, data, recipe, all
in the manifest) are not enough to rebuild it; only the secret's owner can.
This matters because with phi_0 in hand, anyone holding a few pairs of marked
and unmarked images could estimate each carrier as the mean feature difference
phi_0(x~) - phi_0(x) of its class and then erase or forge the mark.

Training costs minutes at MNIST scale, so the result is cached as a saved model
(:mod:`ntga.models.saved`) under ``<cache>/marking-nets/<hash>/`` (the dataset
cache's folder: ``$NTGA_CACHE_DIR`` or ``~/.cache/ntga``), where ``<hash>`` is
the sha256 of everything that determines the weights: the images and labels
(bytes), the model and its options, the training recipe, the derived key, a
hash of the secret, the library version. A rerun with the same inputs and the
same secret (a ``--resume``, the tests) loads it instead of retraining; a run
with a fresh secret trains its own. The cached network is copied into the key
directory; the cache folders are private to the user (every folder this module
creates gets mode 0700).
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
from ntga.run.fingerprint import array_sha256
from ntga.train import TrainConfig, train_and_evaluate

CACHE_KIND = "marking-nets"
EVAL_IMAGES = 1000  # training images the marking net is scored on when there is no held-out target set


def _version() -> str:
    try:
        return metadata.version("ntga-jax")
    except metadata.PackageNotFoundError:
        return "unknown"


def marking_key(key: jax.Array, secret: bytes) -> jax.Array:
    """The marking network's training key: ``key`` with 64 bits of sha256(secret, key) folded in.

    A threefry key holds 64 bits, so that is what the secret contributes; rebuilding the
    network without the secret means guessing them (and training once per guess).
    """
    digest = hashlib.sha256(b"ntga-marking-net\0" + bytes(secret)
                            + np.asarray(jax.random.key_data(key)).tobytes()).digest()
    for word in (int.from_bytes(digest[:4], "big"), int.from_bytes(digest[4:8], "big")):
        key = jax.random.fold_in(key, word)
    return key


def secret_digest(secret: bytes) -> str:
    """sha256 naming the secret in the cache key (the cache must never serve another secret's network)."""
    return hashlib.sha256(b"ntga-marking-net-cache\0" + bytes(secret)).hexdigest()


def content_hash(model: str, options: Mapping[str, Any], config: TrainConfig, key: jax.Array, x: np.ndarray,
                 y: np.ndarray, num_classes: int, secret: bytes) -> str:
    """sha256 of everything that determines the marking network's weights (``key``: the derived one)."""
    h = hashlib.sha256()
    head = {"model": model, "options": {k: str(v) for k, v in sorted(options.items())},
            "config": dataclasses.asdict(config), "num_classes": int(num_classes), "shape": list(x.shape),
            "key": np.asarray(jax.random.key_data(key)).tolist(), "secret": secret_digest(secret),
            "ntga": _version(), "jax": jax.__version__}
    h.update(json.dumps(head, sort_keys=True).encode())
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(np.asarray(y, np.int64)).tobytes())
    return h.hexdigest()


def train_marking_net(model: str, options: Mapping[str, Any], config: TrainConfig, x: np.ndarray, y: np.ndarray,
                      num_classes: int, class_names: Sequence[str], key: jax.Array, secret: bytes, *,
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
      key: the run's key for the network (combined with ``secret`` by :func:`marking_key`).
      secret: the marking's 32-byte secret.
      x_eval, y_eval: held-out images to score it on (default: the first training images).
      cache: read and write the content-hash cache.
      progress: show the trainer's progress bar.

    Returns:
      The network as a :class:`SavedModel`, facts for the manifest (hash, accuracy, cached or not),
      and ``write(dir)``, which saves it as a saved-model directory (for the key).
    """
    key = marking_key(key, secret)
    digest = content_hash(model, options, config, key, x, y, num_classes, secret)
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
    fingerprint = {"content_hash": digest, "num_train_images": int(len(x)),
                   "train_images_sha256": array_sha256(x)}
    extra = {"eval_acc": float(result.final_test_acc), "eval_on": eval_on, "role": "radioactive marking network"}

    def save(path: Path) -> Path:
        return save_model(path, model=model, options=options, num_classes=num_classes, class_names=class_names,
                          input_shape=x.shape[1:], variables=result.variables, mean=result.mean, std=result.std,
                          data_fingerprint=fingerprint, train_config=dataclasses.asdict(resolved), extra=extra)

    if cache:
        tmp = root / f".{digest}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            _private_dirs(root)
            save(tmp)
            shutil.rmtree(where, ignore_errors=True)
            try:
                os.replace(tmp, where)
            except OSError:
                if not (where / "model.json").is_file():  # not another process's finished copy
                    raise
            net = load_model(where)
        except OSError as err:
            log(f"marking network: could not cache it in {root} ({err}); continuing without the cache")
            cache = False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a lost race or a failure leaves no .partial-*
    if not cache:
        with tempfile.TemporaryDirectory(prefix="ntga-marking-") as tmp_root:
            net = load_model(save(Path(tmp_root) / "net"))
    return net, {"hash": digest, "cached": False, "eval_acc": extra["eval_acc"], "eval_on": eval_on}, save


def _private_dirs(path: Path) -> None:
    """Creates ``path`` and every missing parent with mode 0700 (``mkdir(parents=True)`` applies it to the leaf only)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            p.mkdir(mode=0o700)
        except FileExistsError:
            pass
        os.chmod(p, 0o700)


def _copy(src: Path, dest: Path) -> None:
    shutil.copytree(src, dest)


def feature_fn(net: SavedModel) -> Callable[[jax.Array], jax.Array]:
    """``phi(x) -> [B, D]`` penultimate features of pixel-unit float images [B, H, W, C] (pure, eval mode).

    One view per image (no test-time augmentation): the features of the image as given.
    """

    def phi(x):
        return readout_features(net.module, net.variables, net.standardize(x))[0].astype(jnp.float32)

    return phi


def classifier_rows(net: SavedModel) -> np.ndarray:
    """float64 [K, D] rows w_k of the readout layer: its logits are ``features @ rows.T + bias``.

    The rows of the last Dense layer (:func:`ntga.methods.surrogate.readout_layer`); a model may
    scale that layer's output before returning it (fast-resnet multiplies it by 1/9), so its
    logits are a positive multiple of this. The cosines of the white-box test do not depend on
    that scale.
    """
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


__all__ = ["classifier_rows", "content_hash", "feature_fn", "features", "marking_key", "secret_digest",
           "train_marking_net"]
