"""``results.json``: written after every finished run (atomically), resumable.

The file holds the settings every run depends on (data identity, training
recipe, model options, base seed), the plan (victims, conditions, seed
count), every finished run and the aggregated summary. ``complete`` is true
only once every planned run is in it, so a killed evaluation never looks
finished. ``--resume`` reopens it: the settings must be identical (otherwise
the runs would not be comparable), the plan may grow (more seeds, victims or
breakers), and runs already present are skipped.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from ntga import atomic, outdir
from ntga.errors import UserInputError

from .report import summarize

RESULTS = "results.json"
FORMAT = "defenses.evaluate/1"
_MODEL_KEYS = ("train_config", "model_opts")  # per-victim settings a resumed run must share
# Recipe fields added after results files were first written, with the value they implicitly had
# then, so such a file can still be resumed with the same recipe.
_LATER_TRAIN_FIELDS = {"nesterov": False, "label_smoothing": 0.0, "warmup": 0.0, "tta": "none"}


def _with_later_fields(model_info: Mapping[str, Any]) -> dict[str, Any]:
    """The per-victim settings to compare, recipe fields missing from older files filled in."""
    out = {k: model_info.get(k) for k in _MODEL_KEYS}
    if isinstance(out["train_config"], dict):
        out["train_config"] = {**_LATER_TRAIN_FIELDS, **out["train_config"]}
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _canonical(value: Any) -> Any:
    """What the value looks like after a JSON round trip (tuples -> lists), for comparisons."""
    return json.loads(json.dumps(value, allow_nan=False))


def write_json_atomic(path: Path, payload: Any) -> None:
    """Writes JSON to a temporary file in the same directory, then renames it over ``path``."""
    atomic.write_json(path, payload, indent=1)


def _merge_list(old: list, new: list, key=lambda v: v) -> list:
    seen = {key(v) for v in old}
    return list(old) + [v for v in new if key(v) not in seen]


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} before, {b!r} now")
    return out


def _refuse_changes(path: Path, what: str, old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> None:
    diff = _differences(old, new, prefix)
    if diff:
        raise UserInputError(f"cannot resume {path}: {what} different settings (" + "; ".join(diff[:5])
                             + ("; ..." if len(diff) > 5 else "") + "). Use the same settings, or another --out")


def _resumed(path: Path, settings: dict[str, Any], plan: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The payload of an existing results file, checked against the new settings, with the plans merged."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserInputError(f"cannot resume: {path} is not readable JSON ({err})") from None
    if not isinstance(old, dict) or old.get("format") != FORMAT or not isinstance(old.get("runs"), list):
        raise UserInputError(f"cannot resume: {path} is not a {FORMAT} results file")
    _refuse_changes(path, "it was made with", old.get("settings", {}), settings)
    # A victim already in the file must be trained the same way as before.
    for model, new_info in info.get("models", {}).items():
        old_info = old.get("models", {}).get(model)
        if old_info is not None:
            _refuse_changes(path, f"{model} was trained with", _with_later_fields(old_info),
                            _with_later_fields(new_info), f"{model}.")
    merged = {
        "models": _merge_list(old["plan"]["models"], plan["models"]),
        "conditions": _merge_list(old["plan"]["conditions"], plan["conditions"], key=lambda c: c["id"]),
        "seeds": max(old["plan"]["seeds"], plan["seeds"]),
    }
    info = {**info, "models": {**old.get("models", {}), **info.get("models", {})},
            "breakers": {**old.get("breakers", {}), **info.get("breakers", {})}}
    return {**old, **info, "plan": merged}


class ResultsStore:
    """The results of one evaluation directory, kept in memory and mirrored to ``results.json``.

    Create with :meth:`open`; :meth:`add` a finished run and it is on disk.
    """

    def __init__(self, path: Path, payload: dict[str, Any]):
        self.path = path
        self.payload = payload
        self._done = {(r["model"], r["condition"], r["seed"]) for r in payload["runs"]}

    @classmethod
    def open(cls, out: str | Path, *, settings: Mapping[str, Any], plan: Mapping[str, Any],
             info: Mapping[str, Any], resume: bool) -> "ResultsStore":
        """Starts ``out/results.json``, or continues it with ``resume``.

        Args:
            out: the results directory (created).
            settings: everything a run's outcome depends on besides (model, condition, seed).
            plan: ``{"models": [...], "conditions": [Condition.to_json()...], "seeds": N}``.
            info: descriptive fields (data, poison_manifest, models, breakers, library versions, ...),
                refreshed on every write.
            resume: continue an existing file (settings must be identical).

        Raises:
            UserInputError: results exist without ``resume``; ``out`` holds files that are not an
                evaluation's (see :mod:`ntga.outdir`); ``resume`` with different settings or an
                unreadable file.
        """
        out = outdir.ensure_dir(out)
        path = out / RESULTS
        settings, plan, info = _canonical(settings), _canonical(plan), _canonical(info)
        # A directory with anything but our results.json (a user's results.md, figures, ...) is
        # refused even with --resume: results.md and the figures would be replaced.
        outdir.check_reusable(out, owned=lambda d: (d / RESULTS).exists(), resume=resume,
                              what="a defenses.evaluate run (results.json)")
        if resume and path.exists():
            payload = _resumed(path, settings, plan, info)
        else:
            payload = {"format": FORMAT, "complete": False, "created": _now(), **info,
                       "settings": settings, "plan": plan, "runs": []}
        # Nothing is written until the first run finishes: a failure before any training
        # leaves no results file behind (that a rerun without --resume would refuse).
        return cls(path, payload)

    @property
    def plan(self) -> dict[str, Any]:
        return self.payload["plan"]

    @property
    def num_planned(self) -> int:
        plan = self.plan
        return len(plan["models"]) * len(plan["conditions"]) * plan["seeds"]

    def done(self, model: str, condition: str, seed: int) -> bool:
        return (model, condition, seed) in self._done

    @property
    def complete(self) -> bool:
        plan = self.plan
        return all(self.done(m, c["id"], s) for m in plan["models"] for c in plan["conditions"]
                   for s in range(plan["seeds"]))

    def add(self, record: Mapping[str, Any]) -> None:
        """Adds one finished run and rewrites results.json."""
        key = (record["model"], record["condition"], record["seed"])
        if key in self._done:
            raise ValueError(f"run {key} is already recorded")
        self.payload["runs"].append(_canonical(dict(record)))
        self._done.add(key)
        self.save()

    def results(self) -> dict[str, Any]:
        """The payload with a fresh summary and completion flag."""
        plan = self.plan
        self.payload.update(
            complete=self.complete, updated=_now(), num_planned_runs=self.num_planned,
            summary=summarize(self.payload["runs"], plan["models"], plan["conditions"]))
        return self.payload

    def save(self) -> None:
        write_json_atomic(self.path, self.results())
