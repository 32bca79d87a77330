"""Aggregates runs (mean ± std over seeds, gap recovered) and renders the Markdown report.

``gap recovered`` (poisoned + breaker rows) is the share of the accuracy the
poison took away that the breaker gives back::

    (acc_breaker - acc_poisoned) / (acc_clean - acc_poisoned)

computed from the seed means of the same victim, separately for final and
peak test accuracy. It is left out (None, "n/a") when the poison cost less
than ``MIN_GAP`` (1 percentage point): the ratio of two small noisy
differences means nothing. Standard deviations are sample standard deviations
(ddof = 1) over seeds; None with a single seed.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any, Mapping, Sequence

import numpy as np

MIN_GAP = 0.01

_DISTRIBUTIONS = (("jax", "jax"), ("jaxlib", "jaxlib"), ("flax", "flax"), ("optax", "optax"),
                  ("ntga-jax", "ntga-jax"), ("pillow", "pillow"), ("matplotlib", "matplotlib"))


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a result depends on (from distribution metadata)."""
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for dist, key in _DISTRIBUTIONS:
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    a = np.asarray(values, np.float64)
    if a.size == 0:
        return None, None
    return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else None)


def _curve_mean(curves: Sequence[Sequence[float | None]]) -> list[float | None]:
    a = np.array([[np.nan if v is None else v for v in c] for c in curves], np.float64)
    with np.errstate(invalid="ignore"):
        counts = np.sum(np.isfinite(a), axis=0)
        sums = np.nansum(a, axis=0)
    return [float(s / n) if n else None for s, n in zip(sums, counts)]


def _gap(value: float | None, clean: float | None, poisoned: float | None) -> float | None:
    if value is None or clean is None or poisoned is None or clean - poisoned < MIN_GAP:
        return None
    return (value - poisoned) / (clean - poisoned)


def summarize(runs: Sequence[Mapping[str, Any]], models: Sequence[str],
              conditions: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per model and condition: seed count, mean/std of final and peak accuracy, mean curve, gaps.

    Args:
        runs: run records (``runs.run_record``).
        models: model names, in table order.
        conditions: ``Condition.to_json()`` dicts, in table order.

    Returns:
        ``{model: {condition_id: stats}}`` with only the (model, condition) pairs that have runs.
    """
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for model in models:
        rows: dict[str, dict[str, Any]] = {}
        for cond in conditions:
            mine = sorted((r for r in runs if r["model"] == model and r["condition"] == cond["id"]),
                          key=lambda r: r["seed"])
            if not mine:
                continue
            final_mean, final_std = _mean_std([r["final_test_acc"] for r in mine])
            peak_mean, peak_std = _mean_std([r["peak_test_acc"] for r in mine])
            rows[cond["id"]] = {
                "label": cond["label"], "data": cond["data"], "breaker": cond["breaker"],
                "seeds": [r["seed"] for r in mine], "n": len(mine),
                "final_mean": final_mean, "final_std": final_std, "peak_mean": peak_mean, "peak_std": peak_std,
                "peak_epoch_mean": float(np.mean([r["peak_epoch"] for r in mine])),
                "wall_time_s_mean": float(np.mean([r["wall_time_s"] for r in mine])),
                "test_acc_curve_mean": _curve_mean([r["test_acc_curve"] for r in mine]),
                "train_acc_curve_mean": _curve_mean([r.get("train_acc_curve", []) for r in mine]),
            }
        clean, poisoned = rows.get("clean", {}), rows.get("poisoned", {})
        for row in rows.values():
            gapped = row["data"] == "poisoned" and row["breaker"] is not None
            for kind in ("final", "peak"):
                row[f"gap_recovered_{kind}"] = (
                    _gap(row[f"{kind}_mean"], clean.get(f"{kind}_mean"), poisoned.get(f"{kind}_mean"))
                    if gapped else None)
        if rows:
            summary[model] = rows
    return summary


# ----------------------------------------------------------------------------- Markdown


def _pct(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _gap_text(row: Mapping[str, Any], kind: str, has_gap: bool) -> str:
    if row["data"] != "poisoned" or row["breaker"] is None:
        return "—"
    value = row[f"gap_recovered_{kind}"]
    if value is None:
        return "n/a" if not has_gap else "—"
    return f"{100 * value:.1f}%"


def _recipe(config: Mapping[str, Any]) -> str:
    parts = [f"{config['optimizer']} lr {config['lr']:g}"]
    if config["optimizer"] == "sgd" and config.get("momentum"):
        parts.append(f"{'Nesterov ' if config.get('nesterov') else ''}momentum {config['momentum']:g}")
    if config.get("weight_decay"):
        parts.append(f"wd {config['weight_decay']:g}")
    warmup = f" after {100 * config['warmup']:g}% warm-up" if config.get("warmup") else ""
    parts += [f"{config['schedule']} schedule{warmup}", f"{config['loss']} loss"]
    if config.get("label_smoothing"):
        parts.append(f"label smoothing {config['label_smoothing']:g}")
    parts += ["crop+flip" if config["augment"] else "no augmentation",
              f"{config['epochs']} epochs", f"batch {config['batch_size']}"]
    if config.get("tta") not in (None, "none"):
        parts.append(f"{config['tta']} test-time augmentation")
    if not config.get("standardize", True):
        parts.append("raw [0, 1] inputs (no standardisation)")
    return ", ".join(parts)


def _header(results: Mapping[str, Any]) -> list[str]:
    data, settings = results["data"], results["settings"]
    lines = ["# Breaker evaluation", ""]
    if settings["mode"] == "poisons":
        m = results.get("poison_manifest", {})
        gen = ", ".join(f"{k} {m[k]:.4g}" if isinstance(m[k], float) else f"{k} {m[k]}"
                        for k in ("method", "kernel", "norm", "eps", "t", "steps") if k in m)
        lines.append(f"Poisons: `{data['poisons']}` ({gen or 'no generation settings recorded'}).  ")
        if data.get("source_indices") == "unknown":
            lines.append(f"Made by another tool ({data.get('poison_pixels', 'pixels as given')}); which clean "
                         f"image each poison came from is unknown, so the clean baseline trains on "
                         f"{data['clean_baseline']}.  ")
    lines.append(f"Dataset: `{data['dataset']}` (content hash {settings['dataset_content_hash'][:12]}), "
                 f"{data['num_train']} training images, {data['num_test']} test images, "
                 f"{'x'.join(map(str, data['image_shape']))}.  ")
    plan = results["plan"]
    lines.append(f"Seeds: {plan['seeds']} per row (seed s trains with key {settings['base_seed']} + s); "
                 "accuracy in % as mean ± sample std over seeds.")
    done, total = len(results["runs"]), results["num_planned_runs"]
    if not results["complete"]:
        lines += ["", f"**Partial results: {done} of {total} runs finished** "
                  "(rerun the same command with `--resume` to continue)."]
    return lines


def markdown_tables(results: Mapping[str, Any]) -> str:
    """One table per model: rows = conditions; the text ``results.md`` holds and the CLI prints."""
    poisons = results["settings"]["mode"] == "poisons"
    lines = []
    for model, rows in results["summary"].items():
        config = results["models"][model]["train_config"]
        opts = results["models"][model]["model_opts"]
        opt_text = f"; options {', '.join(f'{k}={v}' for k, v in opts.items())}" if opts else ""
        lines += [f"## {model}", "", f"{_recipe(config)}{opt_text}", ""]
        if poisons:
            clean, poisoned = rows.get("clean"), rows.get("poisoned")
            has_gap = clean is None or poisoned is None or (
                clean["final_mean"] - poisoned["final_mean"] >= MIN_GAP)
            lines += ["| condition | final acc (%) | peak acc (%) | gap recovered (final) | "
                      "gap recovered (peak) | seeds |", "|---|---|---|---|---|---|"]
            for row in rows.values():
                lines.append(f"| {row['label']} | {_pct(row['final_mean'], row['final_std'])} | "
                             f"{_pct(row['peak_mean'], row['peak_std'])} | {_gap_text(row, 'final', has_gap)} | "
                             f"{_gap_text(row, 'peak', has_gap)} | {row['n']} |")
        else:
            clean = rows.get("clean")
            lines += ["| condition | final acc (%) | peak acc (%) | final vs clean (pp) | seeds |",
                      "|---|---|---|---|---|"]
            for row in rows.values():
                delta = ("—" if clean is None or row is clean
                         else f"{100 * (row['final_mean'] - clean['final_mean']):+.2f}")
                lines.append(f"| {row['label']} | {_pct(row['final_mean'], row['final_std'])} | "
                             f"{_pct(row['peak_mean'], row['peak_std'])} | {delta} | {row['n']} |")
        lines.append("")
    if poisons:
        lines.append("gap recovered = (acc - acc_poisoned) / (acc_clean - acc_poisoned), from seed means; "
                     f"n/a when the poison cost under {100 * MIN_GAP:g} pp.")
    return "\n".join(lines).rstrip() + "\n"


def markdown(results: Mapping[str, Any], figures: Sequence[str] = ()) -> str:
    """The whole ``results.md``: header, tables, figure links."""
    text = "\n".join(_header(results)) + "\n\n" + markdown_tables(results)
    if figures:
        text += "\n" + "\n".join(f"![{name}]({name})" for name in figures) + "\n"
    return text
