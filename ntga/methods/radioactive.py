"""``radioactive``: radioactive data, a mark that proves use (Sablayrolles, Douze, Schmid, Jegou; ICML 2020).

Not a protection by unlearnability: the marked images train as well as the
clean ones, but a classifier trained on them carries a trace that the owner,
holding the private key, can detect with a p-value (``python -m ntga.detect``).

Algorithm:
  1. A fresh 256-bit secret is drawn. The marking network phi_0 (features = the
     input of its readout layer) is a registered victim trained with the
     project's trainer on the owner's clean training data (all rows, marked or
     not), with a training key derived from the run's key and the secret (so
     the public settings do not rebuild it), cached by content hash
     (:mod:`ntga.marking.network`).
  2. One unit carrier u_k per class, Gaussian directions drawn from the secret
     (:func:`ntga.marking.key.draw_carriers`).
  3. Each image x of class k is optimised from x~ = x for ``steps`` steps on
         L = -<phi(A(x~)) - phi(x), u_k> + l_ft ||phi(A(x~)) - phi(x)||_2 + l_img ||(x~ - x) / std||_2^2
     with A a random augmentation redrawn every step (the trainer's own
     differentiable random crop, plus a horizontal flip for colour images) and
     the l_img term in the network's standardised units, as the paper's
     normalised tensors. After every step the change is projected onto the
     L-inf ball of radius ``eps`` (and onto valid pixels); every
     ``round_every`` steps, and at the end, the image is rounded to uint8
     within the budget (``ntga.pixels.quantize_to_budget``).
  4. The key (secret, carriers, phi_0 and its facts, the marked images, their
     originals, their rows and per-image PSNR) goes to ``--key-out DIR``, never
     into the poison directory, whose manifest records the settings, the key's
     sha256 and the PSNR over all marked images (mean, min, max): nothing that
     says which rows carry the mark.

Defaults and their source: eps 10/255 for colour images (paper); 0.1
(25.5/255) for greyscale images (ours: the paper gives none, and MNIST's digits
on a black background leave most pixels at 0, where a small budget only adds
ink); 90 steps, l_ft 0.01, l_img 0.0005, rounding every 10 steps (paper's
README recipe); carriers from a secret, one per class (paper). The marking
network defaults to ``small-cnn`` (CPU; the paper uses ResNet-18:
``marker=resnet18``) trained for ``marker_epochs`` (10) with its own recipe.

Deviations, stated plainly: the optimiser is Adam with a step of ``step_size``
pixel units (default eps / 10) instead of the paper's SGD at lr 1.0 on
normalised tensors, whose effective step depends on the feature scale of the
network (for our small networks it either stalls or overshoots the 10/255
ball in one step); the augmentation is the trainer's random crop (padding 4
px per 32) and flip rather than a random resized crop, so the mark survives
exactly the transformations the victims train with; the centre crop C of the
paper is the identity here (images are not resized).
"""

from __future__ import annotations

import hashlib

from dataclasses import dataclass, replace
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ntga.errors import UserInputError
from ntga.marking.key import MarkKey, draw_carriers, new_secret
from ntga.marking.network import feature_fn, train_marking_net
from ntga.methods.base import MethodSpec, Protected, ProtectTask
from ntga.models import MODELS
from ntga.options import check_choice
from ntga.pixels import project_delta, quantize_to_budget, to_float
from ntga.train import TrainConfig
from ntga.train.inputs import crop_padding, random_crop, random_flip

GREY_EPS = 0.1
COLOUR_EPS = 10 / 255
AUGMENTS = ("crop-flip", "crop", "none")


@dataclass(frozen=True)
class RadioactiveConfig:
    """Settings of ``radioactive``.

    Attributes:
      eps: L-inf budget in [0, 1] pixel units (default 10/255 colour, 0.1 greyscale).
      steps: optimisation steps per image (paper: 90).
      step_size: Adam step in pixel units (default eps / 10).
      lambda_ft: weight of the feature-distance term l_ft (paper: 0.01).
      lambda_img: weight of the image-distance term l_img, in standardised units (paper: 0.0005).
      round_every: round to uint8 within the budget every this many steps (paper: 10).
      augment: "crop-flip", "crop" or "none" during marking (default: crop-flip colour, crop greyscale).
      batch_size: images marked together.
      marker: the marking network, a name from ``ntga.models.MODELS`` (paper: resnet18).
      marker_width: its ``width`` option (None: the model's own).
      marker_epochs: its training epochs on the clean data.
      marker_batch_size: its training batch size.
      cache: reuse a cached marking network trained on the same data with the same settings.
    """

    eps: float | None = None
    steps: int = 90
    step_size: float | None = None
    lambda_ft: float = 0.01
    lambda_img: float = 0.0005
    round_every: int = 10
    augment: Literal["crop-flip", "crop", "none"] | None = None
    batch_size: int = 128
    marker: str = "small-cnn"
    marker_width: int | None = None
    marker_epochs: int = 10
    marker_batch_size: int = 128
    cache: bool = True

    def __post_init__(self):
        if self.eps is not None and not 0.0 < self.eps <= 1.0:
            raise UserInputError(f"--eps must be in (0, 1], got {self.eps}")
        for name in ("steps", "round_every", "batch_size", "marker_epochs", "marker_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise UserInputError(f"{name} must be an integer >= 1, got {value!r}")
        if self.step_size is not None and not self.step_size > 0:
            raise UserInputError(f"step_size must be > 0, got {self.step_size}")
        for name in ("lambda_ft", "lambda_img"):
            if not getattr(self, name) >= 0:
                raise UserInputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.augment is not None:
            check_choice("augment", self.augment, AUGMENTS)
        check_choice("marker", self.marker, MODELS)
        if self.marker_width is not None and self.marker_width < 1:
            raise UserInputError(f"marker_width must be >= 1 (or none), got {self.marker_width}")


def _resolve(config: RadioactiveConfig, image_shape: tuple[int, ...], num_images: int | None) -> RadioactiveConfig:
    grey = image_shape[-1] == 1
    eps = float(config.eps) if config.eps is not None else (GREY_EPS if grey else COLOUR_EPS)
    return replace(config, eps=eps, step_size=eps / 10 if config.step_size is None else config.step_size,
                   augment=config.augment or ("crop" if grey else "crop-flip"))


def _check(task: ProtectTask, config: RadioactiveConfig) -> None:
    n_clean = len(task.x) + len(task.x_rest)
    if config.marker_batch_size > n_clean:
        raise UserInputError(f"marker_batch_size {config.marker_batch_size} exceeds the {n_clean} clean training "
                             f"images; use at most {n_clean}")
    if task.secret_out is None:
        raise UserInputError("--method radioactive needs --key-out DIR: the private folder its secret key goes to")


def augmentation(kind: str):
    """``A(key, x) -> x`` for [B, H, W, C] images, differentiable in x."""
    def crop(key, x):
        return random_crop(key, x, crop_padding(x.shape[1]))

    if kind == "none":
        return lambda key, x: x
    if kind == "crop":
        return crop

    def crop_flip(key, x):
        k1, k2 = jax.random.split(key)
        return random_flip(k2, crop(k1, x))

    return crop_flip


def _marking_fn(phi, std: tuple[float, ...], kind: str, steps: int, round_every: int, eps: float):
    """The jitted marking of one batch: ``mark(x [B,H,W,C], u [B, D], key, lr, l_ft, l_img) -> uint8 x~``.

    Built once per run (one compilation for all its batches; ``phi`` closes over this run's
    network, so there is nothing to share across runs). ``eps`` is static: the uint8 rounding
    within the budget needs it as a number.
    """
    augment = augmentation(kind)
    inv_std = 1.0 / jnp.asarray(std, jnp.float32)

    def mark(x, u, key, lr, l_ft, l_img):
        f0 = jax.lax.stop_gradient(phi(x))
        opt = optax.adam(lr)

        def loss(delta, k):
            diff = phi(augment(k, jnp.clip(x + delta, 0.0, 1.0))) - f0
            dist = jnp.sqrt(jnp.sum(diff * diff, axis=-1) + 1e-12)
            scaled = delta * inv_std.reshape(1, 1, 1, -1)
            img = jnp.sum(scaled * scaled, axis=(1, 2, 3))
            return jnp.sum(-jnp.sum(diff * u, axis=-1) + l_ft * dist + l_img * img)

        def body(i, carry):
            delta, state = carry
            g = jax.grad(loss)(delta, jax.random.fold_in(key, i))
            updates, state = opt.update(g, state, delta)
            delta = project_delta(delta + updates, x, eps, "linf")
            rounded = to_float(quantize_to_budget(x + delta, x, eps, "linf")) - x
            delta = jnp.where((i + 1) % round_every == 0, rounded, delta)
            return delta, state

        delta = jnp.zeros_like(x)
        delta, _ = jax.lax.fori_loop(0, steps, body, (delta, opt.init(delta)))
        return quantize_to_budget(x + delta, x, eps, "linf")

    return jax.jit(mark)


def psnr(x_clean: np.ndarray, x_marked: np.ndarray) -> np.ndarray:
    """float64 [N] peak signal-to-noise ratio in dB of uint8 images (inf where unchanged)."""
    d = x_marked.astype(np.float64) - x_clean.astype(np.float64)
    mse = np.mean(d.reshape(len(d), -1) ** 2, axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(255.0 ** 2 / mse)


def _canonical_order(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The owner's clean images in an order that depends only on the set of them.

    The task lists the marked rows first, so the order (and hence the trained marking
    network) would change with --fraction; sorting by each image's digest makes releases
    marked with one secret (``--same-secret-as``) share one network, trained once.
    """
    digests = np.array([hashlib.sha256(img.tobytes() + int(label).to_bytes(8, "little")).digest()
                        for img, label in zip(x, y)], dtype="S32")
    order = np.argsort(digests, kind="stable")
    return x[order], y[order]


def protect_radioactive(task: ProtectTask, config: RadioactiveConfig, key: jax.Array) -> Protected:
    """Marks ``task.x`` (see the module docstring); the key goes to ``task.secret_out`` via ``Protected.secret``."""
    n, k = len(task.x), task.num_classes
    k_net, k_mark = jax.random.split(key)
    secret = task.secret if task.secret is not None else new_secret()
    x_clean, y_clean = _canonical_order(np.concatenate([task.x, task.x_rest]), np.concatenate([task.y, task.y_rest]))
    options = {} if config.marker_width is None else {"width": config.marker_width}
    train_cfg = TrainConfig(epochs=config.marker_epochs, batch_size=config.marker_batch_size)
    names = task.class_names or tuple(str(i) for i in range(k))
    net, net_info, write_net = train_marking_net(config.marker, options, train_cfg, x_clean, y_clean, k, names, k_net,
                                                 secret, x_eval=task.x_target, y_eval=task.y_target,
                                                 cache=config.cache, progress=task.progress)
    phi = feature_fn(net)
    dim = int(jax.eval_shape(phi, jax.ShapeDtypeStruct((1, *task.x.shape[1:]), jnp.float32)).shape[-1])
    print(f"  marking network {config.marker} (d = {dim}): accuracy {100 * net_info['eval_acc']:.2f}% on "
          f"{net_info['eval_on']}{' (from the cache)' if net_info['cached'] else ''}")
    carriers = draw_carriers(secret, k, dim)

    bsz = min(config.batch_size, n)
    mark = _marking_fn(phi, tuple(float(s) for s in net.std), config.augment, config.steps, config.round_every,
                       float(config.eps))
    args = (jnp.float32(config.step_size), jnp.float32(config.lambda_ft),
            jnp.float32(config.lambda_img))
    u_all = jnp.asarray(carriers, jnp.float32)
    out = np.empty_like(task.x)
    for b, start in enumerate(tqdm(range(0, n, bsz), desc="radioactive marking", unit="batch",
                                   disable=not task.progress, leave=False)):
        rows = np.minimum(np.arange(start, start + bsz), n - 1)  # one batch shape: pad with the last row
        x = to_float(jnp.asarray(task.x[rows]))
        marked = np.asarray(mark(x, u_all[task.y[rows]], jax.random.fold_in(k_mark, b), *args))
        take = min(bsz, n - start)
        out[start:start + take] = marked[:take]

    p = psnr(task.x, out)
    finite = p[np.isfinite(p)]
    secret_key = MarkKey(
        secret=secret, carriers=carriers, marking_net=write_net,
        source_indices=np.asarray(task.source_indices if task.source_indices is not None else np.arange(n)),
        x_marked=out, x_original=task.x.copy(), y=task.y.copy(), psnr_db=p,
        info={"method": "radioactive", "eps": float(config.eps), "image_shape": list(task.x.shape[1:]),
              "class_names": list(names),
              "marking_net": {"model": config.marker, "options": options, "feature_dim": dim, **net_info},
              "config": {f: getattr(config, f) for f in config.__dataclass_fields__}})
    # Public: aggregates only. Per-image values in row order would say which rows are marked.
    info = {
        "psnr_mean_db": float(finite.mean()) if finite.size else None,
        "psnr_min_db": float(finite.min()) if finite.size else None,
        "psnr_max_db": float(finite.max()) if finite.size else None,
        "num_unchanged": int(n - finite.size),
    }
    return Protected(x=out, y=task.y.copy(), info=info, secret=secret_key)


def _report(info) -> str:
    if info["psnr_mean_db"] is None:
        return "  radioactive: no image changed"
    return (f"  radioactive: PSNR over the marked images: mean {info['psnr_mean_db']:.2f} dB, min "
            f"{info['psnr_min_db']:.2f}, max {info['psnr_max_db']:.2f}")


SPECS = {
    "radioactive": MethodSpec(
        name="radioactive", summary="radioactive data: a mark that proves use (Sablayrolles et al., ICML 2020)",
        config_type=RadioactiveConfig, protect=protect_radioactive, resolve=_resolve, budget_norm="linf",
        check=_check, report=_report, secret_output=True),
}
