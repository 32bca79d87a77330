"""What to train: conditions (clean / poisoned / poisoned + breaker), victims, seeds; and the loop.

One *run* is (model, condition, seed). Seed ``s`` trains with
``jax.random.key(base_seed + s)``, which the trainer splits into its init /
shuffle / step keys. Victims that ``ntga.train.train_many_seeds`` vmaps
(no batch norm or dropout: fnn, fnn-relu) train all their missing seeds in one
call; the others train one seed at a time, so every finished run is saved
before the next starts.

A breaker's ``prepare`` runs once per condition on the training images of
that condition (the poisons, or the clean images with ``--breakers-on-clean``),
with one key derived from the base seed, and its result is shared by every
victim and seed: the prepared breakers are deterministic, and sharing keeps a
single copy of the transformed training set in memory. Its ``hooks`` act inside
the training step. Test images are never altered.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from defenses.breakers import Breaker
from ntga.models import MIN_IMAGE_SIZE, MODELS, get_model, model_options
from ntga.models.saved import module_overrides
from ntga.options import parse_assignment, typed_items
from ntga.train import TrainConfig, TrainResult, train_and_evaluate, train_many_seeds
from ntga.errors import UserInputError

from .inputs import EvalData

CLEAN, POISONED = "clean", "poisoned"
# fold_in constant for the breakers' prepare key (distinct from the training keys' use of key(base + s)).
PREPARE_STREAM = 0x70726570


@dataclasses.dataclass(frozen=True)
class Condition:
    """One row of the results table: which training images, which breaker.

    Attributes:
        data: "clean" or "poisoned" (the training images the run starts from).
        breaker: the breaker applied to them, or None.
    """

    data: str
    breaker: Breaker | None = None

    @property
    def id(self) -> str:
        """Stable key in results.json: ``clean``, ``poisoned``, ``poisoned/<spec>``, ``clean/<spec>``."""
        return self.data if self.breaker is None else f"{self.data}/{self.breaker.spec}"

    @property
    def label(self) -> str:
        """Row label in tables and figures."""
        if self.breaker is None:
            return self.data
        return self.breaker.spec if self.data == POISONED else f"clean + {self.breaker.spec}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "data": self.data,
                "breaker": None if self.breaker is None else self.breaker.spec}


def make_conditions(breakers: Sequence[Breaker], *, poisoned: bool, breakers_on_clean: bool = False,
                    clean_baseline: bool = True) -> list[Condition]:
    """The rows to train, baselines first.

    With poisons: clean, poisoned, poisoned + each breaker, then (with
    ``breakers_on_clean``) clean + each breaker, which measures what a breaker
    costs on its own. Clean-only: clean, then clean + each breaker. ``none`` is
    the poisoned (or clean) baseline itself; repeated specs are dropped.
    ``clean_baseline=False`` (with poisons) leaves out the clean run, for
    comparisons that measure it once elsewhere with the same settings.
    """
    active = list({b.spec: b for b in breakers if b.name != "none"}.values())
    if not poisoned:
        return [Condition(CLEAN)] + [Condition(CLEAN, b) for b in active]
    rows = ([Condition(CLEAN)] if clean_baseline else []) + [Condition(POISONED)]
    rows += [Condition(POISONED, b) for b in active]
    if breakers_on_clean:
        rows += [Condition(CLEAN, b) for b in active]
    return rows


# ----------------------------------------------------------------------------- victims


def parse_model_opts(items: Sequence[str], models: Sequence[str],
                     given: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, dict[str, Any]]:
    """``--model-opt`` values (and ``--model NAME@KEY=VALUE`` options) -> per-model overrides.

    ``KEY=VALUE`` applies to every chosen model, ``MODEL:KEY=VALUE`` and the ``--model``
    spec's own options to one (they win over a global one). Values are typed from the
    victim's module attributes (:func:`ntga.models.model_options`: ``width=16`` an int,
    ``stages=1,1,1,1`` a tuple, ``dtype`` one of float32, bfloat16, float16); keys the module
    does not declare are read as bool (true/false), tuple, int, float or string, and the
    module itself refuses them when it is built. The result is JSON-friendly (tuples stay
    tuples, dtypes as names).

    Args:
        items: the repeated ``--model-opt`` values.
        models: the chosen victims' names.
        given: raw options per model from ``--model NAME@KEY=VALUE,...``.
    """
    shared: dict[str, str] = {}
    specific: dict[str, dict[str, str]] = {m: dict((given or {}).get(m, {})) for m in models}
    for item in items:
        head = item.split("=", 1)[0]
        target, colon, _ = head.partition(":") if ":" in head else ("", "", "")
        assignment = item[len(target) + 1:] if colon else item
        key, value = parse_assignment(assignment, "--model-opt", "width=16 or small-cnn:width=8")
        if not value:
            raise UserInputError(f"--model-opt must look like KEY=VALUE or MODEL:KEY=VALUE (e.g. width=16), "
                                 f"got {item!r}")
        if colon and target not in specific:
            raise UserInputError(f"--model-opt {item!r} names model {target!r}, which is not among --model "
                                 f"{','.join(models)}")
        if colon and key in (given or {}).get(target, {}):
            raise UserInputError(f"option {key!r} of model {target!r} is given both in --model and in --model-opt")
        (specific[target] if colon else shared)[key] = value
    return {m: typed_items(model_options(get_model(m)), {**shared, **specific[m]}, f"model {m}", strict=False)
            for m in models}


@dataclasses.dataclass(frozen=True)
class Victim:
    """A victim to train: registry name, overrides and the resolved recipe."""

    name: str
    opts: Mapping[str, Any]
    config: TrainConfig

    @property
    def vmapped(self) -> bool:
        spec = get_model(self.name)
        return not (spec.batch_norm or spec.dropout)

    def to_json(self) -> dict[str, Any]:
        return {"description": get_model(self.name).description,
                "train_config": dataclasses.asdict(self.config.resolved(get_model(self.name))),
                "model_opts": {k: list(v) if isinstance(v, tuple) else v for k, v in self.opts.items()},
                "seeds_vmapped": self.vmapped}


def check_victim(victim: Victim, image_shape: Sequence[int], num_classes: int, num_train: int) -> None:
    """Fails before any training if the victim cannot take these images or settings.

    Builds the module and traces its initialisation on one [1, H, W, C] image
    (``jax.eval_shape``: no compilation, no arrays).

    Raises:
        UserInputError: naming the model, the image shape and the problem.
    """
    h, w, c = (int(d) for d in image_shape)
    where = f"{victim.name!r} cannot train on {h}x{w}x{c} images"
    if h < MIN_IMAGE_SIZE or w < MIN_IMAGE_SIZE:
        raise UserInputError(f"model {where}: the victims need at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels")
    if victim.config.batch_size > num_train:
        raise UserInputError(f"--batch-size {victim.config.batch_size} exceeds the {num_train} training images; "
                             f"use at most {num_train}")
    spec = get_model(victim.name)
    module = spec.build(num_classes, **module_overrides(victim.opts))

    def init():
        key = jax.random.key(0)
        return module.init({"params": key, "dropout": key}, jnp.zeros((1, h, w, c), jnp.float32), train=False)

    try:
        jax.eval_shape(init)
    except UserInputError:
        raise
    except Exception as err:  # flax/jax shape errors come in several types; report any as the user's
        raise UserInputError(f"model {where} with options {dict(victim.opts)}: {type(err).__name__}: {err}") from None


def make_victims(models: Sequence[str], opts: Mapping[str, Mapping[str, Any]], config: TrainConfig
                 ) -> list[Victim]:
    """Validated victims in the given order (unknown names raise, listing the accepted ones)."""
    if not models:
        raise UserInputError(f"--model is empty; accepted: {', '.join(MODELS)}")
    for name in models:
        get_model(name)
    if len(set(models)) != len(models):
        raise UserInputError(f"--model lists a model twice: {','.join(models)}")
    return [Victim(name, dict(opts.get(name, {})), config) for name in models]


# ----------------------------------------------------------------------------- the loop


def run_record(victim: Victim, condition: Condition, seed: int, base_seed: int, result: TrainResult,
               batched: int) -> dict[str, Any]:
    """One finished run as a JSON-ready dict (NaN -> None in the curves)."""
    def curve(a):
        return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, np.float64)]

    return {
        "model": victim.name, "condition": condition.id, "seed": int(seed), "key_seed": int(base_seed + seed),
        "final_test_acc": float(result.final_test_acc), "peak_test_acc": float(result.peak_test_acc),
        "peak_epoch": int(result.peak_epoch), "test_acc_curve": curve(result.test_acc_curve),
        "train_acc_curve": curve(result.train_acc_curve), "train_loss_curve": curve(result.train_loss_curve),
        "wall_time_s": float(result.wall_time_s), "images_per_s": float(result.images_per_s),
        "seeds_trained_together": int(batched),
    }


def training_set(data: EvalData, condition: Condition, base_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The training images and labels of a condition, after the breaker's ``prepare``."""
    if condition.data == POISONED:
        if not data.poisoned:
            raise UserInputError("a poisoned condition needs --poisons")
        x, y = data.x_poison, data.y_poison
    else:
        x, y = data.x_clean, data.y_clean
    if condition.breaker is not None and condition.breaker.has_prepare:
        key = jax.random.fold_in(jax.random.key(base_seed), PREPARE_STREAM)
        x, y = condition.breaker.prepare(x, y, key)
    return x, y


def run_all(data: EvalData, victims: Sequence[Victim], conditions: Sequence[Condition], seeds: int,
            base_seed: int, *, done: Callable[[str, str, int], bool], save: Callable[[dict[str, Any]], None],
            progress: bool = True, log: Callable[[str], None] = print,
            keep_model: Callable[[Victim, Condition, int, TrainResult, np.ndarray], None] | None = None) -> int:
    """Trains every (victim, condition, seed) for which ``done`` is False.

    Conditions are the outer loop, so each breaker prepares its training set
    once for all victims and seeds.

    Args:
        data: the arrays (``inputs.load_poisoned`` / ``inputs.load_clean``).
        victims: checked victims (:func:`check_victim`).
        conditions: rows (:func:`make_conditions`).
        seeds: seeds per (victim, condition), 0..seeds-1.
        base_seed: seed s trains with ``jax.random.key(base_seed + s)``.
        done: ``done(model, condition_id, seed)``: already in the results (resume).
        save: called with each finished run's record (:func:`run_record`), in order.
        progress: tqdm bars over epochs.
        log: where the one-line summary of each run goes.
        keep_model: ``keep_model(victim, condition, seed, result, x_train)`` is called for each
            finished run before ``save`` (``--save-models``), with the images it trained on.

    Returns:
        The number of runs trained.
    """
    todo = [(c, v, s) for c in conditions for v in victims for s in range(seeds) if not done(v.name, c.id, s)]
    total, count = len(todo), 0
    for condition in conditions:
        pending = {v.name: [s for (c, w, s) in todo if c is condition and w is v] for v in victims}
        if not any(pending.values()):
            continue
        x, y = training_set(data, condition, base_seed)
        hooks = condition.breaker.hooks(data.num_classes) if condition.breaker is not None else None
        for victim in victims:
            todo_seeds = pending[victim.name]
            if not todo_seeds:
                continue
            common = dict(hooks=hooks, progress=progress, num_classes=data.num_classes,
                          model_kwargs=module_overrides(victim.opts))
            # vmapped victims train all missing seeds at once; the others one by one, saving each.
            groups = [todo_seeds] if victim.vmapped else [[s] for s in todo_seeds]
            for group in groups:
                keys = [jax.random.key(base_seed + s) for s in group]
                if len(group) > 1:
                    results = train_many_seeds(victim.name, x, y, data.x_test, data.y_test, victim.config, keys,
                                               **common)
                else:
                    results = [train_and_evaluate(victim.name, x, y, data.x_test, data.y_test, victim.config,
                                                  keys[0], **common)]
                for s, result in zip(group, results):
                    count += 1
                    if keep_model is not None:
                        keep_model(victim, condition, s, result, x)
                    save(run_record(victim, condition, s, base_seed, result, len(group)))
                    log(f"[{count}/{total}] {victim.name} | {condition.label} | seed {s}: final "
                        f"{100 * result.final_test_acc:.2f}%  peak {100 * result.peak_test_acc:.2f}% "
                        f"(epoch {result.peak_epoch})  {result.wall_time_s:.1f}s")
    return count
