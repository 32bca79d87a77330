"""``DETECTORS``: every detector of protected samples by its command-line name, and the ``--detector`` parser.

A detector scores each training row, higher = more likely protected::

    --detector cd,early-loss,linear
    --detector cd@variant=features,steps=50,linear@signal=loss

(the options grammar of :mod:`ntga.options`). Each detector has a frozen config
dataclass; ``--list-opts detector:NAME`` prints its options and defaults.
Detectors that need a model (``cd``, ``early-loss``) share one suspect model
per run, trained on the suspect data with ``--model/--epochs/--batch-size/--lr``
(:mod:`defenses.detectors.model`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np

from ntga.errors import UserInputError
from ntga.options import config_from_items, describe_options, format_spec, lookup, parse_spec, split_specs

from . import cd, dynamics
from .model import ModelConfig, SuspectModels

# fold_in constants: each detector's own stream of the run's key.
MODEL_STREAM, CD_STREAM = 0x6d6f64, 0x6364


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    """A registered detector.

    Attributes:
        name: command-line name.
        description: one line.
        source: paper / method the detector and its defaults come from.
        config: its frozen settings dataclass.
        needs_model: whether it uses the suspect model.
        score: ``score(x, y, num_classes, key, config, model) -> (scores [N], info)``;
            ``model()`` returns the shared :class:`~defenses.detectors.model.SuspectModel`.
        unstable: what to lower when the scores come out non-finite (a diverged optimisation).
    """

    name: str
    description: str
    source: str
    config: type
    needs_model: bool
    score: Callable[..., tuple[np.ndarray, dict[str, Any]]] = dataclasses.field(repr=False)
    unstable: str = ""


def _score_cd(x, y, num_classes, key, config: cd.CDConfig, model):
    suspect = model()
    f = suspect.logits_fn() if config.variant == "logits" else suspect.features_fn()
    scores, history = cd.cd_scores(f, x, jax.random.fold_in(key, CD_STREAM), config)
    resolved = config.resolved()
    return scores, {"resolved": {"alpha": resolved.alpha, "beta": resolved.beta, "lr": resolved.lr},
                    "objective_first_step": float(history[:, 0].mean()),
                    "objective_last_step": float(history[:, -1].mean()),
                    "model_train_acc": suspect.train_acc}


def _score_early_loss(x, y, num_classes, key, config: dynamics.EarlyLossConfig, model):
    suspect = model()
    return dynamics.early_loss_scores(suspect.losses, config), {
        "mean_loss_per_epoch": [float(v) for v in suspect.losses.mean(axis=1)],
        "model_train_acc": suspect.train_acc}


def _score_linear(x, y, num_classes, key, config: dynamics.LinearConfig, model):
    del key, model  # zero-initialised full-batch fit: deterministic
    scores, accuracy = dynamics.linear_scores(x, y, num_classes, config)
    return scores, {"linear_train_acc": accuracy}


_SPECS = (
    DetectorSpec("cd", "Cognitive Distillation: the smallest input mask that keeps the suspect model's output; "
                 "score = -mean(mask) (small patterns are suspicious)",
                 "Huang et al., ICLR 2023 (github HanxunH/CognitiveDistillation); CD-L alpha 0.01, beta 1, lr 0.1, "
                 "CD-F alpha 0.001, beta 10, lr 0.05; Adam betas (0.1, 0.1), 100 steps",
                 cd.CDConfig, True, _score_cd,
                 "lower the mask's step size (cd@lr) or the suspect model's learning rate (defenses.detect --lr)"),
    DetectorSpec("early-loss", "per-example loss while the suspect model trains on the suspect data; "
                 "score = -area under the loss curve (fitted early = suspicious)",
                 "training-dynamics signal of UDP (Zhu et al., AAAI 2024) and Huang et al. (ICLR 2021, Fig. 1)",
                 dynamics.EarlyLossConfig, True, _score_early_loss,
                 "the suspect model's training diverged: lower its learning rate (defenses.detect --lr)"),
    DetectorSpec("linear", "margin of each example under a short linear fit on raw pixels "
                 "(linearly separable shortcuts are fitted first)",
                 "Yu et al. (KDD 2022), Sandoval-Segura et al. (NeurIPS 2023); fit as the orthogonal-projection breaker",
                 dynamics.LinearConfig, False, _score_linear, "lower the fit's step size (linear@lr)"),
)

DETECTORS: dict[str, DetectorSpec] = {spec.name: spec for spec in _SPECS}


@dataclasses.dataclass(frozen=True)
class Detector:
    """A configured detector: its registry entry, its settings and the options given (for ``spec``)."""

    entry: DetectorSpec
    config: Any
    given: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def spec(self) -> str:
        return format_spec(self.name, self.given)


def get_detector(name: str) -> DetectorSpec:
    return lookup(DETECTORS, name, "detector")


def parse_detector(text: str) -> Detector:
    """``name[@key=value,...]`` -> a :class:`Detector` (unknown names and options are refused)."""
    name, items = parse_spec(text, "--detector", "cd@variant=features")
    entry = get_detector(name)
    return Detector(entry, config_from_items(entry.config, items, f"detector {name}"), dict(items))


def parse_detectors(text: str) -> list[Detector]:
    """The ``--detector`` value: comma-separated detectors, each name at most once."""
    detectors = [parse_detector(item) for item in split_specs(text, "--detector")]
    names = [d.name for d in detectors]
    if len(set(names)) != len(names):
        raise UserInputError(f"--detector lists a detector twice: {text}")
    return detectors


def describe_detector(name: str) -> str:
    """``--list-opts detector:NAME``."""
    entry = get_detector(name)
    return describe_options(entry.config, f"detector {name}: {entry.description}",
                            note=f"options ({name}@KEY=VALUE,KEY=VALUE in --detector):",
                            doc=f"{(entry.config.__doc__ or '').strip()}\n\nsource: {entry.source}")


def describe_detectors() -> str:
    """One block per detector for ``--help``."""
    return "\n".join(f"{e.name}: {e.description}\n    source: {e.source}" for e in DETECTORS.values())


@dataclasses.dataclass(frozen=True)
class Detection:
    """One detector's output: scores [N] (float64, higher = more suspicious) and facts about the run."""

    detector: Detector
    scores: np.ndarray
    info: Mapping[str, Any]
    wall_time_s: float


def run_detector(detector: Detector, x: np.ndarray, y: np.ndarray, num_classes: int, key: jax.Array,
                 models: SuspectModels, model_cfg: ModelConfig) -> Detection:
    """Scores every row of (x, y) with one detector (the suspect model comes from ``models``)."""
    start = time.perf_counter()
    scores, info = detector.entry.score(x, y, num_classes, key, detector.config, lambda: models.get(model_cfg))
    scores = np.asarray(scores, np.float64)
    if scores.shape != (len(x),):  # a bug of the detector, not of the user's settings
        raise RuntimeError(f"detector {detector.name} returned scores of shape {scores.shape} for {len(x)} rows")
    bad = int(np.sum(~np.isfinite(scores)))
    if bad:
        raise UserInputError(f"detector {detector.spec}: {bad} of {len(x)} scores are not finite (the optimisation "
                             f"diverged); {detector.entry.unstable or 'lower its step size'}")
    if detector.entry.needs_model:
        info = {**info, "model": model_cfg.to_json()}
    return Detection(detector, scores, info, time.perf_counter() - start)


def score_rows(x: np.ndarray, y: np.ndarray, num_classes: int, detector: Detector, *, key: jax.Array,
               model_cfg: ModelConfig = ModelConfig(), log: Callable[[str], None] = print) -> np.ndarray:
    """Scores [N] of one detector on (x, y), with its own suspect model: the library call the filter breaker uses.

    ``key`` plays the role of ``jax.random.key(--seed)`` in ``defenses.detect``: the same key
    and settings give the same scores as the command.
    """
    models = SuspectModels(x, y, num_classes, jax.random.fold_in(key, MODEL_STREAM), log=log)
    return run_detector(detector, x, y, num_classes, key, models, model_cfg).scores


__all__ = ["DETECTORS", "Detection", "Detector", "DetectorSpec", "describe_detector", "describe_detectors",
           "get_detector", "parse_detector", "parse_detectors", "run_detector", "score_rows"]
