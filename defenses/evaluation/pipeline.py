"""The evaluation behind `python -m defenses.evaluate`, callable from Python.

``evaluate(data, victims, conditions, ...)`` checks every victim against the
data before any training, opens (or resumes) ``OUT/results.json``, trains the
missing runs (saving results.json and results.md after each one) and finally
writes the figures and the complete report.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from ntga.models import get_model
from ntga.models.saved import save_model
from ntga.run.fingerprint import array_sha256
from ntga.train import TrainConfig, TrainResult
from ntga import atomic, outdir
from ntga.errors import UserInputError

from . import figures
from .inputs import EvalData
from .report import library_versions, markdown
from .runs import POISONED, Condition, Victim, check_victim, run_all
from .store import ResultsStore

REPORT = "results.md"
MODELS_DIR = "models"


def _device() -> str:
    devices = jax.devices()
    return f"{len(devices)} x {devices[0].platform} ({devices[0].device_kind})"


def check_sizes(data: EvalData, victims: Sequence[Victim], conditions: Sequence[Condition]) -> None:
    """Fails before any training if a condition leaves fewer training rows than a victim's batch.

    A breaker that drops rows (``filter@share=S``) says how many it keeps
    (:meth:`defenses.breakers.Breaker.rows_left`, which also checks the breaker's own
    needs, e.g. filter's suspect model and ``filter@batch_size``); with ``filter``
    and no ``share`` the count is known only once it has scored the rows.

    Raises:
        UserInputError: naming the condition, the rows it keeps and the options to change.
    """
    for condition in conditions:
        if condition.breaker is None:
            continue
        n = len(data.x_poison if condition.data == POISONED and data.poisoned else data.x_clean)
        left = condition.breaker.rows_left(n)
        for victim in victims:
            if left is not None and victim.config.batch_size > left:
                raise UserInputError(
                    f"condition {condition.label!r} trains on {left} of the {n} training rows, fewer than "
                    f"--batch-size {victim.config.batch_size} of victim {victim.name!r}: drop fewer rows (a smaller "
                    f"filter@share) or use --batch-size at most {left}")


def _breaker_info(conditions: Sequence[Condition]) -> dict[str, Any]:
    info = {}
    for c in conditions:
        b = c.breaker
        if b is not None:
            info[b.spec] = {"description": b.description, "source": b.source, "touches": list(b.touches),
                            "options": {k: v for k, v in b.options.items()}}
    return info


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What :func:`evaluate` produced."""

    out: Path
    results: dict[str, Any]
    markdown: str
    figures: list[str]
    trained: int


def evaluate(data: EvalData, victims: Sequence[Victim], conditions: Sequence[Condition], *, config: TrainConfig,
             seeds: int, base_seed: int, out: str | Path, resume: bool = False, progress: bool = True,
             extra_info: Mapping[str, Any] | None = None, log: Callable[[str], None] = print,
             save_models: bool = False) -> Outcome:
    """Trains every (victim, condition, seed) and writes results.json, results.md and the figures.

    Args:
        data: ``inputs.load_poisoned(...)`` or ``inputs.load_clean(...)``.
        victims: ``runs.make_victims(...)``; each is checked against the data first.
        conditions: ``runs.make_conditions(...)``.
        config: the training recipe as given (None fields = each victim's default).
        seeds: runs per (victim, condition).
        base_seed: seed s trains with ``jax.random.key(base_seed + s)``.
        out: results directory.
        resume: continue ``out/results.json`` (identical settings), skipping finished runs.
        progress: per-epoch progress bars.
        extra_info: more descriptive fields for results.json (e.g. the command line).
        log: where progress lines go.
        save_models: keep every trained victim under ``out/models/<model>/<condition>/seed<k>/``
            (:func:`ntga.models.saved.save_model`; load with :func:`ntga.models.saved.load_model`).

    Raises:
        UserInputError: a victim that cannot take the images, a condition that leaves fewer
            training rows than the batch size (:func:`check_sizes`), results that exist without
            ``resume``, or ``resume`` with different settings. Nothing is trained before these checks.
    """
    if seeds < 1:
        raise UserInputError(f"--seeds must be at least 1, got {seeds}")
    for victim in victims:
        check_victim(victim, data.image_shape, data.num_classes, len(data.x_clean))
    for condition in conditions:  # builds the training-time hooks once, so a clash shows now
        if condition.breaker is not None:
            condition.breaker.hooks(data.num_classes)
    check_sizes(data, victims, conditions)
    settings = {**data.identity, "base_seed": int(base_seed), "train_config": dataclasses.asdict(config)}
    plan = {"models": [v.name for v in victims], "conditions": [c.to_json() for c in conditions], "seeds": seeds}
    info = {"data": data.describe, "poison_manifest": data.poison_manifest,
            "models": {v.name: v.to_json() for v in victims}, "breakers": _breaker_info(conditions),
            "library_versions": library_versions(), "device": _device(), **(extra_info or {})}
    # One writer per directory; finished runs are kept even if a later run fails (--resume continues).
    with outdir.writing(out, clean_on_error=False):
        store = ResultsStore.open(out, settings=settings, plan=plan, info=info, resume=resume)
        out = store.path.parent
        planned = len(victims) * len(conditions) * seeds
        skipped = sum(store.done(v.name, c.id, s) for v in victims for c in conditions for s in range(seeds))
        if skipped:
            log(f"resuming {store.path}: {skipped} finished run(s) skipped")
        log(f"{planned - skipped} run(s) to train: {len(victims)} victim(s) x {len(conditions)} condition(s) x "
            f"{seeds} seed(s); results in {out}")

        def save(record: dict[str, Any]) -> None:
            store.add(record)
            atomic.write_text(out / REPORT, markdown(store.results()))

        keep = None
        if save_models:
            def keep(victim: Victim, condition: Condition, seed: int, result: TrainResult, x: np.ndarray) -> None:
                where = model_dir(out, victim.name, condition.id, seed)
                save_victim(where, data, victim, condition, seed, base_seed, result, x)

        trained = run_all(data, victims, conditions, seeds, base_seed, done=store.done, save=save,
                          progress=progress, log=log, keep_model=keep)
        store.save()
        results = store.results()
        names = figures.write_figures(results, out)
        text = markdown(results, names)
        atomic.write_text(out / REPORT, text)
    return Outcome(out=out, results=results, markdown=text, figures=names, trained=trained)


def model_dir(out: str | Path, model: str, condition_id: str, seed: int) -> Path:
    """``out/models/<model>/<condition>/seed<k>`` (a breaker's ``/`` and odd characters become ``--`` / ``_``)."""
    name = re.sub(r"[^A-Za-z0-9._=@,+-]", "_", condition_id.replace("/", "--"))
    return Path(out) / MODELS_DIR / model / name / f"seed{int(seed)}"


def save_victim(where: Path, data: EvalData, victim: Victim, condition: Condition, seed: int, base_seed: int,
                result: TrainResult, x: np.ndarray) -> Path:
    """One trained victim as a self-describing saved model (what it is, how and on what it was trained)."""
    spec = get_model(victim.name)
    cfg = victim.config.resolved(spec)
    fingerprint = {**data.identity, "condition": condition.id,
                   "train_images_sha256": array_sha256(x),
                   "num_train_images": int(len(x)), "dataset": data.describe.get("dataset")}
    return save_model(where, model=victim.name, options=victim.opts, num_classes=data.num_classes,
                      class_names=data.dataset.class_names, input_shape=data.image_shape,
                      variables=result.variables, mean=result.mean, std=result.std, data_fingerprint=fingerprint,
                      train_config=dataclasses.asdict(cfg),
                      extra={"seed": int(seed), "key_seed": int(base_seed + seed),
                             "final_test_acc": float(result.final_test_acc),
                             "peak_test_acc": float(result.peak_test_acc)})
