"""Trained classifiers on disk, pickle-free and self-describing: ``save_model`` / ``load_model``.

A saved model is a directory with two files::

    model.json    what the network is: registry name, module options, number of classes and
                  their names, input shape [H, W, C], the per-channel standardisation the
                  trainer applied (mean/std in pixel units, or none), the training recipe,
                  a fingerprint of the data it was trained on, and the sha256 of params.npz
    params.npz    the Flax variables, one array per leaf, named by its path
                  (``params/Conv_0/kernel``, ``batch_stats/BatchNorm_0/mean``)

The structure comes from the names (nested dicts of arrays, as Flax keeps them),
the numbers from ``np.load(..., allow_pickle=False)``, so PyTorch users and other
tools can read the weights with numpy alone. ``defenses.evaluate --save-models``
writes one per trained victim; ``ntga.detect`` and the radioactive marking key
read them back with :func:`load_model`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntga import atomic
from ntga.errors import UserInputError
from ntga.train.inputs import standardize
from ntga.train.step import tta_logits

MODEL_JSON = "model.json"
PARAMS_NPZ = "params.npz"
FORMAT = "ntga-model"
VERSION = 1


def module_overrides(opts: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-friendly module options -> module attributes (dtype names -> jnp dtypes, lists -> tuples).

    Raises:
      UserInputError: a ``dtype`` that is not one of ``ntga.models.DTYPES``.
    """
    from ntga.models import DTYPES
    from ntga.options import check_choice

    out = {}
    for k, v in opts.items():
        if k == "dtype":
            v = v if not isinstance(v, str) else DTYPES[check_choice("dtype", v, DTYPES)]
        out[k] = tuple(v) if isinstance(v, list) else v
    return out


def _json_options(opts: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in opts.items():
        if isinstance(v, tuple):
            v = list(v)
        elif k == "dtype" and not isinstance(v, str):
            v = jnp.dtype(v).name
        out[k] = v
    return out


def _flatten(variables: Mapping[str, Any], prefix: str = "", leaf=np.asarray) -> dict[str, Any]:
    flat = {}
    for name, value in variables.items():
        if "/" in str(name):
            raise ValueError(f"variable name {name!r} contains '/'")
        path = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path + "/", leaf))
        else:
            flat[path] = leaf(value)
    return flat


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


@dataclasses.dataclass(frozen=True)
class SavedModel:
    """A loaded classifier.

    Attributes:
      path: its directory.
      name: registry name (``ntga.models.MODELS``).
      options: module options as stored (JSON values).
      num_classes: K.
      class_names: K names.
      input_shape: (H, W, C).
      mean, std: float32 [C] standardisation in pixel units (zeros / ones when the trainer did not standardise).
      module: the Flax module.
      variables: ``{"params": ..., maybe "batch_stats": ...}`` (jnp arrays).
      meta: the whole ``model.json``.
    """

    path: Path
    name: str
    options: dict[str, Any]
    num_classes: int
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    mean: np.ndarray
    std: np.ndarray
    module: Any
    variables: dict[str, Any]
    meta: dict[str, Any]

    def standardize(self, x: jax.Array) -> jax.Array:
        """Pixel-unit float images [B, H, W, C] in [0, 1] -> the network's input (``ntga.train.inputs``)."""
        return standardize(x, jnp.asarray(self.mean), jnp.asarray(self.std))

    @property
    def tta(self) -> str | None:
        """The test-time augmentation the model was evaluated with (``train_config.tta``: "flip", "none")."""
        return (self.meta.get("train_config") or {}).get("tta")

    def logits(self, x: jax.Array) -> jax.Array:
        """[B, K] eval-mode logits of pixel-unit float images [B, H, W, C] (pure; jit at the call site).

        As the trainer evaluates the model: standardised, and averaged over the test-time views of
        its recipe (``tta``, e.g. fast-resnet's flip), so the black-box test sees the outputs a user
        of the model would see.
        """
        return tta_logits(lambda v: self.module.apply(self.variables, self.standardize(v), train=False), x,
                          self.tta)


def save_model(path: str | Path, *, model: str, options: Mapping[str, Any], num_classes: int,
               class_names: Sequence[str], input_shape: Sequence[int], variables: Mapping[str, Any],
               mean: np.ndarray | None, std: np.ndarray | None, data_fingerprint: Mapping[str, Any],
               train_config: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Writes a trained classifier to the directory ``path`` (created; existing files of ours replaced).

    Args:
      path: the directory.
      model: registry name.
      options: module options (JSON values; dtypes by name or as jnp dtypes, tuples allowed).
      num_classes: K.
      class_names: K names.
      input_shape: (H, W, C).
      variables: Flax variables (``params`` and maybe ``batch_stats``).
      mean, std: [C] per-channel standardisation in pixel units, or None when the trainer fed raw pixels.
      data_fingerprint: what identifies the training data (content hashes, condition, ...).
      train_config: the resolved training recipe.
      extra: more JSON fields (e.g. test accuracy).

    Returns:
      ``path``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    channels = int(input_shape[-1])
    standardized = mean is not None
    mean = np.zeros(channels, np.float32) if mean is None else np.asarray(mean, np.float32).reshape(-1)
    std = np.ones(channels, np.float32) if std is None else np.asarray(std, np.float32).reshape(-1)
    buf = io.BytesIO()
    np.savez(buf, **_flatten(jax.device_get(dict(variables))))
    data = buf.getvalue()
    atomic.write_bytes(path / PARAMS_NPZ, data)
    meta = {
        "format": FORMAT, "version": VERSION, "model": model, "options": _json_options(options),
        "num_classes": int(num_classes), "class_names": [str(c) for c in class_names],
        "input_shape": [int(d) for d in input_shape], "standardize": standardized,
        "mean": [float(v) for v in mean], "std": [float(v) for v in std],
        "data_fingerprint": dict(data_fingerprint), "train_config": dict(train_config or {}),
        "params_file": PARAMS_NPZ, "params_sha256": hashlib.sha256(data).hexdigest(), **dict(extra or {}),
    }
    atomic.write_json(path / MODEL_JSON, meta)  # last: a model.json vouches for a complete params.npz
    return path


def is_saved_model(path: str | Path) -> bool:
    return (Path(path) / MODEL_JSON).is_file()


def load_model(path: str | Path) -> SavedModel:
    """Reads a :func:`save_model` directory (checked against its sha256 and its architecture).

    Raises:
      UserInputError: not a saved model, a damaged file, or weights that do not fit the architecture.
    """
    from ntga.models import get_model
    from ntga.train.core import init_variables

    path = Path(path)
    if not is_saved_model(path):
        raise UserInputError(f"{path} is not a saved model (no {MODEL_JSON}); save victims with "
                             "`python -m defenses.evaluate ... --save-models` (OUT/models/<model>/<condition>/seed<k>)")
    try:
        meta = json.loads((path / MODEL_JSON).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT!r}")
        params_file = meta["params_file"]
        # A plain file name inside the model directory: model.json never points elsewhere.
        if not isinstance(params_file, str) or Path(params_file).name != params_file or params_file in ("", ".", ".."):
            raise ValueError(f"params_file {params_file!r} is not a file name inside the model directory")
        data = (path / params_file).read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["params_sha256"]:
            raise ValueError(f"{params_file} does not match its sha256 (damaged or edited)")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            flat = {k: z[k] for k in z.files}
        name, k, shape = meta["model"], int(meta["num_classes"]), tuple(int(d) for d in meta["input_shape"])
        options = meta.get("options", {})
        if not isinstance(options, dict):
            raise ValueError(f"options must be a JSON object, got {options!r}")
        mean = np.asarray(meta["mean"], np.float32).reshape(-1)
        std = np.asarray(meta["std"], np.float32).reshape(-1)
        if len(shape) != 3 or mean.shape != (shape[-1],) or std.shape != (shape[-1],) or not np.all(std > 0):
            raise ValueError(f"input_shape {list(shape)} with mean {mean.tolist()} and std {std.tolist()} "
                             "is not an image shape [H, W, C] with C means and C positive stds")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserInputError(f"cannot read the saved model {path}: {err}") from None
    try:
        spec = get_model(name)
    except UserInputError as err:
        raise UserInputError(f"the saved model {path} names a model this version does not have: {err}") from None
    try:
        module = spec.build(k, **module_overrides(options))
        expected = jax.eval_shape(lambda: init_variables(module, shape, jax.random.key(0)))
    except UserInputError as err:
        raise UserInputError(f"the saved model {path} has unsupported options {options}: {err}") from None
    except (TypeError, ValueError) as err:  # an option the module does not declare, a shape it cannot take
        raise UserInputError(f"the saved model {path} does not describe a buildable {name} "
                             f"(options {options}, input shape {list(shape)}): {err}") from None
    want = {p: (tuple(a.shape), np.dtype(a.dtype)) for p, a in _flatten(dict(expected), leaf=lambda a: a).items()}
    got = {p: (tuple(a.shape), a.dtype) for p, a in flat.items()}
    if want != got:
        missing = sorted(set(want) - set(got))[:3]
        odd = sorted(p for p in set(want) & set(got) if want[p] != got[p])[:3]
        raise UserInputError(f"{path}: the weights do not fit {name} with options {meta.get('options')} "
                             f"(missing {missing}, other shapes {odd})")
    variables = jax.tree.map(jnp.asarray, _unflatten(flat))
    return SavedModel(path=path, name=name, options=dict(options), num_classes=k,
                      class_names=tuple(meta.get("class_names") or map(str, range(k))), input_shape=shape,
                      mean=mean, std=std, module=module, variables=variables, meta=meta)


__all__ = ["SavedModel", "is_saved_model", "load_model", "module_overrides", "save_model"]
