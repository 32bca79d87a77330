"""The detection run behind ``python -m defenses.detect``, callable from Python.

``load_source`` reads what to score (a poison directory, verified by sha256, with
its ``protected_positions.npy`` when a ``--fraction`` run wrote one; or the
training split of a dataset spec); ``detect`` runs each detector, writes its
scores as soon as it finishes, with a checksum (``--resume`` skips detectors whose
scores are saved under identical settings and pass it; damaged ones are recomputed),
then the metrics, figures and summary.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

from ntga import atomic, outdir
from ntga.data import is_dataset_spec, load_dataset, make_split
from ntga.data.limits import DecodeLimits
from ntga.errors import UserInputError
from ntga.poisondir import read_poison_dir
from ntga.run.fingerprint import array_sha256

from . import report
from .metrics import auroc, average_precision
from .model import ModelConfig, SuspectModels
from .registry import MODEL_STREAM, Detector, run_detector

FORMAT = "ntga-detection-1"


@dataclasses.dataclass(frozen=True)
class Source:
    """The rows to score.

    Attributes:
        x: [N, H, W, C] uint8 images; y: [N] int labels; num_classes: K.
        kind: "poisons" (a poison directory) or "dataset" (a dataset's training split).
        what: a human-readable name (path or spec).
        positions: int64 [P] protected rows (a --fraction poison directory), else None.
        rows: int64 [N] indices into the dataset's training split ("dataset" only).
        identity: hashes that make two runs comparable (for --resume).
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    kind: str
    what: str
    positions: np.ndarray | None
    rows: np.ndarray | None
    identity: dict[str, Any]


def load_source(source: str, *, train_size: int | None = None, seed: int = 0, cache_dir=None,
                use_cache: bool = True, limits: DecodeLimits | None = None) -> Source:
    """A poison directory (folder with manifest.json) or a dataset spec (its training split).

    Args:
        source: the ``--poisons`` value.
        train_size: dataset specs only: score a class-stratified subset of N training rows
            (the rows ``ntga.generate --train-size N --target-size 0 --seed S`` would protect).
        seed: the subset's seed.

    Raises:
        UserInputError: unreadable or tampered poison directory, unknown spec, --train-size
            with a poison directory.
    """
    from defenses.evaluation.inputs import is_poison_dir

    if is_poison_dir(source):
        if train_size is not None:
            raise UserInputError("--train-size does not apply to a poison directory: every row is scored")
        p = read_poison_dir(source)
        manifest_classes = p.manifest.get("dataset_class_names") or p.manifest.get("class_names")
        k = max(int(p.y.max()) + 1, len(manifest_classes) if isinstance(manifest_classes, list) else 0, 2)
        return Source(x=p.x, y=p.y.astype(np.int64), num_classes=k, kind="poisons", what=str(p.path),
                      positions=p.protected_positions, rows=None,
                      identity={"poison_x_sha256": p.manifest["files"]["x_train.npy"]["sha256"],
                                "poison_y_sha256": p.manifest["files"]["y_train.npy"]["sha256"]})
    if Path(source).is_dir():
        raise UserInputError(f"--poisons {source} is a folder without manifest.json, so not a poison directory; "
                             "for an image folder write folder:PATH")
    if not is_dataset_spec(source):
        raise UserInputError(f"--poisons {source!r} is neither a poison directory (a folder with manifest.json) "
                             "nor a dataset spec (digits, idx:DIR, folder:PATH, npz:FILE, tfds:NAME)")
    ds = load_dataset(source, cache_dir=cache_dir, use_cache=use_cache, limits=limits)
    rows = (np.arange(len(ds.x_train), dtype=np.int64) if train_size is None else
            np.asarray(make_split(ds, train_size=train_size, target_size=0, seed=seed).train_idx, np.int64))
    x, y = ds.x_train[rows], np.asarray(ds.y_train[rows], np.int64)
    return Source(x=x, y=y, num_classes=ds.num_classes, kind="dataset", what=ds.spec, positions=None, rows=rows,
                  identity={"dataset_content_hash": ds.content_hash, "rows_sha256": array_sha256(rows)})


@dataclasses.dataclass(frozen=True)
class Outcome:
    out: Path
    payload: dict[str, Any]
    computed: int


def _entry(d, labels: np.ndarray | None) -> dict[str, Any]:
    entry = {"spec": d.detector.spec, "description": d.detector.entry.description, "source": d.detector.entry.source,
             "config": dataclasses.asdict(d.detector.config), "info": dict(d.info), "wall_time_s": d.wall_time_s,
             "scores": f"{d.detector.name}/{report.SCORES}",
             "score_summary": {"min": float(d.scores.min()), "median": float(np.median(d.scores)),
                               "max": float(d.scores.max())}}
    if labels is not None:
        entry["auroc"] = auroc(d.scores, labels)
        entry["auprc"] = average_precision(d.scores, labels)
    return entry


def detect(source: Source, detectors: Sequence[Detector], *, model_cfg: ModelConfig, seed: int, out: str | Path,
           resume: bool = False, require_labels: bool = False, command: str = "",
           log: Callable[[str], None] = print) -> Outcome:
    """Scores every row of ``source`` with each detector and writes ``out`` (layout: :mod:`.report`).

    Raises:
        UserInputError: ``require_labels`` without protection labels (before any work), an
            ``out`` that is not new, empty or (with ``resume``) a detection run of the same settings.
    """
    labels, why = report.describe_labels(source.positions, len(source.x), source.kind)
    if require_labels and labels is None:
        raise UserInputError(f"--auroc needs protection labels, but {source.what} has none ({why}); AUROC and "
                             "AUPRC need a poison directory from a --fraction run (protected_positions.npy)")
    if labels is not None and labels.all():
        labels, why = None, "protected_positions.npy lists every row"
        if require_labels:
            raise UserInputError(f"--auroc needs clean rows too, but {source.what} protects every row")
    settings = {**source.identity, "seed": int(seed), "model": model_cfg.to_json()}
    out = Path(out)
    with outdir.writing(out, clean_on_error=False):
        outdir.check_reusable(out, owned=lambda d: (d / report.DETECTION).exists(), resume=resume,
                              what="a defenses.detect run (detection.json)")
        previous = {}
        if resume and (out / report.DETECTION).exists():
            try:
                old = json.loads((out / report.DETECTION).read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise UserInputError(f"{out / report.DETECTION} is not readable ({err}); choose a new --out") from None
            if old.get("settings") != json.loads(json.dumps(settings)):
                raise UserInputError(f"--resume: {out} was scored with other settings ({old.get('settings')}); "
                                     "choose a new --out")
            previous = old.get("detectors", {})
        payload = {"format": FORMAT, "complete": False, "command": command, "settings": settings,
                   "source": {"kind": source.kind, "what": source.what, "num_rows": int(len(source.x)),
                              "num_classes": int(source.num_classes), "labels": labels is not None,
                              "labels_note": why, "num_protected": int(labels.sum()) if labels is not None else None},
                   "detectors": {}, "figures": [], "device": str(jax.devices()[0].device_kind)}
        if source.rows is not None:
            report.save_npy(out / report.ROWS, source.rows)
        key = jax.random.key(seed)
        models = SuspectModels(source.x, source.y, source.num_classes, jax.random.fold_in(key, MODEL_STREAM), log=log)
        scores, computed = {}, 0
        for det in detectors:
            folder = out / det.name
            old = previous.get(det.name)
            same = old is not None and old.get("config") == json.loads(json.dumps(dataclasses.asdict(det.config)))
            saved = report.load_scores(folder / report.SCORES, len(source.x)) if same else None
            if saved is not None:
                log(f"{det.spec}: scores already in {folder} (resumed)")
                payload["detectors"][det.name] = old
                scores[det.name] = saved
                continue
            if same:
                log(f"{det.spec}: the saved scores in {folder} are missing or damaged; recomputing them")
            log(f"{det.spec}: scoring {len(source.x)} rows")
            d = run_detector(det, source.x, source.y, source.num_classes, key, models, model_cfg)
            folder.mkdir(exist_ok=True)
            report.save_scores(folder / report.SCORES, d.scores)
            entry = _entry(d, labels)
            payload["detectors"][det.name] = entry
            scores[det.name] = d.scores
            computed += 1
            log(f"{det.spec}: done in {d.wall_time_s:.1f}s" + (f", AUROC {entry['auroc']:.3f}, AUPRC "
                                                              f"{entry['auprc']:.3f}" if labels is not None else ""))
            atomic.write_json(out / report.DETECTION, payload)
        if labels is not None:
            title = f"{Path(source.what).name}: {int(labels.sum())} of {len(labels)} rows protected"
            payload["figures"] = report.write_figures(
                out, scores, labels, {n: payload["detectors"][n]["auroc"] for n in scores}, title)
        payload["complete"] = True
        atomic.write_json(out / report.DETECTION, payload)
        atomic.write_text(out / report.SUMMARY, report.markdown(payload))
    return Outcome(out=out, payload=payload, computed=computed)


__all__ = ["Outcome", "Source", "detect", "load_source"]
