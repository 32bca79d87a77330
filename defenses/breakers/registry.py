"""``BREAKERS``: every breaker by its command-line name, and the ``--breakers`` parser.

Syntax of ``defenses.evaluate --breakers`` (used verbatim, no quoting needed
in a POSIX shell)::

    runs     := run ("," run)*          one training run (per seed) each
    run      := breaker ("+" breaker)*  composed left to right
    breaker  := name ["@" key "=" value (("," | "@") key "=" value)*]

    none,grayscale,jpeg@quality=20,grayscale+jpeg
    adversarial-training@norm=l2,eps=0.5,step_size=0.1,ueraser@draws=1
    adversarial-training@norm=l2@eps=0.5@step_size=0.1     (the same options, '@'-separated)

The breaker grammar is the one of every registry (:mod:`ntga.options`): a
comma followed by another ``key=value`` continues the breaker before it,
any other comma starts the next run.

Numbers accept fractions (``eps=8/255``). Unknown names, options or bad values
raise UserInputError listing what is accepted. ``Breaker.spec`` gives the
canonical text back (only non-default options), for result tables.

Early stopping: several breakers (UEraser, JPEG, grayscale) recover most
accuracy early and then lose some as the victim fits the remaining shortcut,
so the trainer reports both the peak and the final test accuracy of every
run; nothing here needs to know about it.
"""

from __future__ import annotations

from functools import partial

from defenses.breakers import squeeze
from defenses.breakers.adversarial import DEFAULT_EPS, DEFAULT_STEP, pgd
from defenses.breakers.augment import make_cutmix, make_cutout, make_mixup
from defenses.breakers.filtering import rows_left
from defenses.breakers.base import (
    TOUCHES_BATCHES,
    TOUCHES_IMAGES,
    TOUCHES_LOSS,
    TOUCHES_PROCEDURE,
    Breaker,
    BreakerFactory,
    Option,
    compose,
)
from defenses.breakers.losses import make_apl_loss
from defenses.breakers.projection import MAX_LR, orthogonal_projection
from defenses.breakers.ueraser import ueraser_augment, ueraser_max
from ntga.models import MODELS
from ntga.train import TrainHooks
from ntga.errors import UserInputError
from ntga.options import describe_options, lookup, parse_spec, split_specs
from ntga.pixels import NORMS

# defenses.detectors.DETECTORS, named here because the detectors import a breaker module
# (the projection's linear fit); tests/test_detect.py checks the two agree.
DETECTOR_NAMES = ("cd", "early-loss", "linear")
# Victims that can be a detector's suspect model (trained by the surrogate loop).
SURROGATE_MODELS = tuple(name for name, spec in MODELS.items() if not spec.needs_victim_trainer)

APBENCH = "APBench (Qin et al., 2023; github lafeat/apbench)"
ISS = "Image Shortcut Squeezing (Liu et al., ICML 2023)"


def _image_breaker(fn):
    """Wraps an images -> images function as a prepare(x, y, key) that keeps the labels."""

    def prepare(x, y, key):
        del key  # deterministic
        return fn(x), y

    return prepare


# --- builders: options in, (prepare_fn, hooks_fn) out ------------------------


def _build_none():
    return None, None


def _build_grayscale():
    return _image_breaker(squeeze.grayscale), None


def _build_jpeg(quality):
    return _image_breaker(partial(squeeze.jpeg, quality=quality)), None


def _build_bdr(bits):
    return _image_breaker(partial(squeeze.bit_depth_reduction, bits=bits)), None


def _build_blur(kernel, sigma):
    if kernel % 2 == 0:
        raise UserInputError(f"breaker 'blur': kernel must be odd (a centred Gaussian), got {kernel}")
    return _image_breaker(partial(squeeze.gaussian_blur, kernel=kernel, sigma=sigma)), None


def _build_projection(steps, lr):
    def prepare(x, y, key):
        del key  # zero-initialised full-batch fit: deterministic
        return orthogonal_projection(x, y, steps=steps, lr=lr), y

    return prepare, None


def _build_cutout(size):
    return None, lambda num_classes: TrainHooks(batch_transform=make_cutout(size))


def _build_mixup(alpha):
    return None, lambda num_classes: TrainHooks(batch_transform=make_mixup(num_classes, alpha))


def _build_cutmix(alpha):
    return None, lambda num_classes: TrainHooks(batch_transform=make_cutmix(num_classes, alpha))


def _resolve_adversarial(values):
    # eps and step size default per norm (8/255 & 2/255 L-inf; 0.5 & 0.1 L2).
    norm = values["norm"]
    return {
        **values,
        "eps": DEFAULT_EPS[norm] if values["eps"] is None else values["eps"],
        "step_size": DEFAULT_STEP[norm] if values["step_size"] is None else values["step_size"],
    }


def _build_adversarial(norm, eps, step_size, steps):
    def adversarial(key, input_loss, x, y):
        # input_loss(x, y) -> [B] at the current parameters (ntga.train).
        # Summing keeps each example's gradient unscaled by the batch size.
        return pgd(
            lambda xb, yb: input_loss(xb, yb).sum(),
            key, x, y, norm=norm, eps=eps, step_size=step_size, steps=steps,
        )

    return None, lambda num_classes: TrainHooks(adversarial=adversarial)


def _build_ueraser(draws, max_epochs):
    lite = TrainHooks(batch_transform=lambda key, x, y: (ueraser_augment(key, x), y))
    if draws == 1:  # UEraser-Lite: no loss needed, a plain batch augmentation
        return None, lambda num_classes: lite

    def adversarial(key, input_loss, x, y):
        return ueraser_max(input_loss, key, x, y, draws=draws)

    if max_epochs == 0:
        return None, lambda num_classes: TrainHooks(adversarial=adversarial)
    # UEraser-Max for the first max_epochs epochs, then one draw per example.
    return None, lambda num_classes: TrainHooks(adversarial=adversarial, switch_epoch=max_epochs, after=lite)


def _build_apl(alpha, beta, passive):
    return None, lambda num_classes: TrainHooks(loss_fn=make_apl_loss(alpha, beta, passive))


def _build_filter(detector, share, epochs, model, batch_size):
    def prepare(x, y, key):
        # Imported here: the detectors use the projection breaker's linear fit (no import cycle).
        from defenses.breakers.filtering import filter_rows

        return filter_rows(x, y, key, detector=detector, share=share, epochs=epochs, model=model,
                           batch_size=batch_size)

    return prepare, None


_FACTORIES = (
    BreakerFactory(
        "none", "No defense: train on the data as given.", "baseline", (), (), _build_none
    ),
    BreakerFactory(
        "grayscale",
        "Replace each training image by its luma (BT.601), replicated over the channels.",
        f"{ISS}; {APBENCH} 'Gray'",
        (TOUCHES_IMAGES,),
        (),
        _build_grayscale,
    ),
    BreakerFactory(
        "jpeg",
        "Re-encode each training image with the real JPEG codec (Pillow) at a low quality.",
        f"{ISS}; {APBENCH} 'JPEG' (quality 10)",
        (TOUCHES_IMAGES,),
        (Option("quality", int, 10, "libjpeg quality", low=1, high=100),),
        _build_jpeg,
    ),
    BreakerFactory(
        "bdr",
        "Bit-depth reduction: quantise each channel of the training images to 2**bits levels.",
        f"{ISS}; {APBENCH} 'BDR' (2 bits)",
        (TOUCHES_IMAGES,),
        (Option("bits", int, 2, "bits per channel kept", low=1, high=8),),
        _build_bdr,
    ),
    BreakerFactory(
        "blur",
        "Gaussian blur of the training images (reflected borders).",
        f"{APBENCH} 'Gauss' (kernel 3, sigma 0.1)",
        (TOUCHES_IMAGES,),
        (
            Option("kernel", int, 3, "odd kernel size in pixels", low=1, high=31),
            Option("sigma", float, 0.1, "standard deviation in pixels", low=1e-6),
        ),
        _build_blur,
    ),
    BreakerFactory(
        "cutout",
        "Cutout: zero one square hole per training image per batch.",
        f"DeVries & Taylor (2017); {APBENCH} 'Cutout'",
        (TOUCHES_BATCHES,),
        (Option("size", int, 16, "hole side in pixels (clipped at borders)", low=1),),
        _build_cutout,
    ),
    BreakerFactory(
        "mixup",
        "Mixup: convex combinations of training image pairs and of their one-hot labels.",
        f"Zhang et al. (ICLR 2018); {APBENCH} 'Mixup'",
        (TOUCHES_BATCHES,),
        (Option("alpha", float, 1.0, "Beta(alpha, alpha) mixing distribution", low=1e-6),),
        _build_mixup,
    ),
    BreakerFactory(
        "cutmix",
        "CutMix: paste a box from a partner training image; labels mixed by area.",
        f"Yun et al. (ICCV 2019); {APBENCH} 'CutMix'",
        (TOUCHES_BATCHES,),
        (Option("alpha", float, 1.0, "Beta(alpha, alpha) area distribution", low=1e-6),),
        _build_cutmix,
    ),
    BreakerFactory(
        "adversarial-training",
        "Adversarial training: each batch replaced by PGD examples against the victim's own loss. "
        "Needs long training to pay off (APBench: 200 epochs); in runs of a few epochs it costs "
        "accuracy by itself, and each step costs steps + 1 forward-backward passes.",
        f"Madry et al. (ICLR 2018); {APBENCH} 'AT' (L-inf 8/255, 10 steps of 2/255)",
        (TOUCHES_BATCHES, TOUCHES_PROCEDURE),
        (
            Option("norm", str, "linf", "threat model", choices=NORMS),
            Option("eps", float, None, "radius", low=0.0, shown="8/255 for linf, 0.5 for l2"),
            Option("step_size", float, None, "PGD step", low=0.0, shown="2/255 for linf, 0.1 for l2"),
            Option("steps", int, 10, "PGD steps", low=0),
        ),
        _build_adversarial,
        _resolve_adversarial,
    ),
    BreakerFactory(
        "ueraser",
        "UEraser: plasma brightness/contrast, channel shuffle and TrivialAugment; "
        "trains on the highest-loss of several draws. Needs long training to pay off (APBench: 200 "
        "epochs); in runs of a few epochs its strong augmentation costs accuracy by itself.",
        f"Qin et al. (2023), 'Learning the Unlearnable'; {APBENCH} 'UEraser-Max' (5 draws)",
        (TOUCHES_BATCHES, TOUCHES_PROCEDURE),
        (
            Option("draws", int, 5, "augmentations per example, max loss kept (1 = UEraser-Lite)", low=1),
            Option("max_epochs", int, 0, "epochs trained on the max over draws, one draw per example afterwards "
                   "(0 = every epoch; APBench's UEraser-Max: 300)", low=0),
        ),
        _build_ueraser,
    ),
    BreakerFactory(
        "orthogonal-projection",
        "Fit a linear classifier on the training pixels and project its directions out of every training image.",
        "Sandoval-Segura et al. (NeurIPS 2023), 'What Can We Learn from Unlearnable Datasets?'",
        (TOUCHES_IMAGES,),
        (
            Option("steps", int, 300, "full-batch gradient steps of the linear fit", low=1),
            Option("lr", float, 1.0, "step size of the linear fit on normalised pixels (stable below 4)",
                   low=1e-12, high=MAX_LR),
        ),
        _build_projection,
    ),
    BreakerFactory(
        "apl",
        "Active-Passive Loss: alpha * normalised CE + beta * reverse CE instead of the victim's loss.",
        "Ma et al. (ICML 2020), 'Normalized Loss Functions for Deep Learning with Noisy Labels'",
        (TOUCHES_LOSS,),
        (
            Option("alpha", float, 1.0, "weight of the active term (NCE)", low=0.0),
            Option("beta", float, 1.0, "weight of the passive term", low=0.0),
            Option("passive", str, "rce", "passive term", choices=("rce", "mae")),
        ),
        _build_apl,
    ),
    BreakerFactory(
        "filter",
        "Drop the training rows a detector finds most suspicious (defenses.detect) and train on the rest: "
        "the share S with the highest scores, or (share unset) the rows above Otsu's threshold of the scores, "
        "chosen without any protection labels.",
        "ours; detectors: Cognitive Distillation (Huang et al., ICLR 2023), training dynamics (UDP, Zhu et al., "
        "AAAI 2024), linear separability (Yu et al., KDD 2022)",
        (TOUCHES_IMAGES,),
        (
            Option("detector", str, "early-loss", "which detector scores the rows",
                   choices=DETECTOR_NAMES),
            Option("share", float, None, "share of the rows dropped, the most suspicious first", low=0.0,
                   high=0.99, shown="unset: Otsu's threshold"),
            Option("epochs", int, 5, "epochs of the detector's suspect model (cd, early-loss)", low=1),
            Option("model", str, "small-cnn", "the detector's suspect model (cd, early-loss)",
                   choices=SURROGATE_MODELS),
            Option("batch_size", int, 128, "batch size of the detector's suspect model (cd, early-loss); "
                   "at most the number of training rows", low=1),
        ),
        _build_filter,
        rows=rows_left,
    ),
)

BREAKERS: dict[str, BreakerFactory] = {factory.name: factory for factory in _FACTORIES}


def _accepted_names() -> str:
    return ", ".join(BREAKERS)


def parse_breaker(text: str) -> Breaker:
    """One run: ``name[@k=v,...][+name[@k=v,...]...]`` -> a (composed) Breaker (grammar: :mod:`ntga.options`)."""
    text = text.strip()
    if not text:
        raise UserInputError(f"empty breaker in --breakers; accepted: {_accepted_names()}")
    members = []
    for item in text.split("+"):
        if not item.split("@", 1)[0].strip():
            raise UserInputError(
                f"empty breaker name in {text!r} (a stray '+' or '@'?); accepted: {_accepted_names()}")
        name = item.split("@", 1)[0].strip()
        factory = lookup(BREAKERS, name, "breaker")
        first = factory.options[0] if factory.options else None
        example = f"{name}@{first.name}={first.shown or first.default}" if first else f"{name} (no options)"
        _, items = parse_spec(item, f"breaker {name!r}", example)
        members.append(factory(**{key: factory.option(key).parse(value, name) for key, value in items.items()}))
    return compose(*members)


def parse_breakers(text: str) -> list[Breaker]:
    """The ``--breakers`` value: comma-separated runs -> one Breaker per run, in order.

    A comma followed by another ``key=value`` continues the options of the breaker before it
    (``jpeg@quality=20,grayscale`` is two runs; ``blur@kernel=5,sigma=1`` one).

    Example:
        >>> [b.spec for b in parse_breakers("none,grayscale+jpeg@quality=20")]
        ['none', 'grayscale+jpeg@quality=20']
    """
    if not text or not text.strip():
        raise UserInputError(f"--breakers is empty; accepted: {_accepted_names()}")
    return [parse_breaker(item) for item in split_specs(text, "--breakers")]


def describe_breaker(name: str) -> str:
    """``--list-opts breaker:NAME``: what it does, its options with defaults, its source."""
    factory = lookup(BREAKERS, name, "breaker")
    return describe_options({o.name: o.field() for o in factory.options},
                            f"breaker {name}: {factory.description}",
                            note=f"options ({name}@KEY=VALUE,KEY=VALUE in --breakers):" if factory.options else "",
                            doc=f"source: {factory.source}")


def describe_breakers() -> str:
    """Human-readable list of every breaker, its options and source (for --help and docs)."""
    lines = []
    for factory in BREAKERS.values():
        lines.append(f"{factory.name}: {factory.description}")
        for option in factory.options:
            lines.append(f"    @{option.describe()}")
        lines.append(f"    source: {factory.source}")
    return "\n".join(lines)
