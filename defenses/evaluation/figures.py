"""Figures of an evaluation (matplotlib, Agg backend: no display needed).

* ``accuracy_bars.png``: per victim, final and peak test accuracy per
  condition (mean over seeds, error bars = sample std, none with one seed),
  with the clean and poisoned final accuracy as reference lines.
* ``accuracy_curves.png``: per victim, test accuracy (solid) and training
  accuracy (dotted, same colour) per epoch, mean over seeds, one colour per
  condition: training accuracy near 100% while test accuracy stays low is
  the signature of an unlearnable dataset.

Titles name the victim, the data and, for poisons, what made them (method,
kernel, budget) as the poison manifest records it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

BARS = "accuracy_bars.png"
CURVES = "accuracy_curves.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def MaxNLocator(**kwargs):
    from matplotlib.ticker import MaxNLocator as locator

    return locator(**kwargs)


def _save(plt, fig, path: str | Path) -> Path:
    """tight_layout, then write via a temporary file so a reader never sees half a PNG."""
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _wrap(label: str, width: int = 24) -> str:
    """Breaks long breaker specs before '@' or '+' so tick labels and legends stay narrow."""
    lines, line = [], ""
    for part in label.replace("+", "\0+").replace("@", "\0@").split("\0"):
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        line += part
    return "\n".join(lines + [line])


def _pct(values) -> np.ndarray:
    return np.array([np.nan if v is None else 100.0 * v for v in values], np.float64)


def poison_label(results: Mapping[str, Any]) -> str | None:
    """What made the poisons, e.g. "ntga (fnn kernel, linf eps 8/255)"; None for clean-only runs."""
    if results["settings"].get("mode") != "poisons":
        return None
    m = results.get("poison_manifest") or {}
    if not m:
        names = [Path(part.strip()).name for part in str(results["data"].get("poisons", "")).split(",")]
        return f"external poisons {','.join(names)}"
    details = [f"{m['kernel']} kernel"] if m.get("kernel") else []
    if isinstance(m.get("eps"), (int, float)):
        eps = m["eps"]
        levels = eps * 255
        budget = f"{levels:.3g}/255" if abs(levels - round(levels)) < 1e-6 and eps < 1 else f"{eps:.3g}"
        details.append(f"{m.get('norm', '')} eps {budget}".strip())
    return f"{m.get('method', 'poisons')}" + (f" ({', '.join(details)})" if details else "")


def _title(model: str, results: Mapping[str, Any]) -> str:
    data = results["data"]
    what = poison_label(results)
    return (f"{model} on {data['dataset']}" + (f", poisons: {what}" if what else "")
            + f" ({data['num_train']} train, {data['num_test']} test)")


def plot_bars(results: Mapping[str, Any], path: str | Path) -> Path:
    """Bar chart of final and peak accuracy per condition, one panel per victim."""
    plt = _pyplot()
    summary = results["summary"]
    models = list(summary)
    widest = max((len(rows) for rows in summary.values()), default=1)
    fig, axes = plt.subplots(len(models), 1, figsize=(max(6.0, 1.1 * widest + 2.5), 3.6 * len(models)),
                             squeeze=False)
    for ax, model in zip(axes[:, 0], models):
        rows = list(summary[model].values())
        x = np.arange(len(rows))
        for offset, kind, colour in ((-0.2, "final", "tab:blue"), (0.2, "peak", "tab:orange")):
            means = _pct(r[f"{kind}_mean"] for r in rows)
            stds = np.nan_to_num(_pct(r[f"{kind}_std"] for r in rows))
            spread = max(r["n"] for r in rows) > 1  # one seed has no spread: draw no error bars
            ax.bar(x + offset, means, 0.4, yerr=stds if spread else None, capsize=3, color=colour,
                   label=f"{kind} test accuracy")
            for xi, m, sd in zip(x + offset, means, stds):
                if np.isfinite(m):  # above the error bar, so the two never overlap
                    ax.annotate(f"{m:.1f}", (xi, m + sd), textcoords="offset points", xytext=(0, 2),
                                ha="center", fontsize=7)
        for cond, style in (("clean", "--"), ("poisoned", ":")):
            if cond in summary[model]:
                ax.axhline(100 * summary[model][cond]["final_mean"], color="grey", linestyle=style, linewidth=1,
                           label=f"{cond} (final)")
        ax.set_xticks(x)
        ax.set_xticklabels([_wrap(r["label"]) for r in rows], rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 119)  # headroom for the legend above 100%
        ax.set_yticks(np.arange(0, 101, 20))
        ax.set_ylabel("test accuracy (%)")
        n = max(r["n"] for r in rows)
        seeds = f"mean ± std over {n} seeds" if n > 1 else "one seed"
        ax.set_title(f"{_title(model, results)}; {seeds}", fontsize=9)
        ax.legend(fontsize=7, loc="upper center", ncol=4, frameon=False)
        ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def plot_curves(results: Mapping[str, Any], path: str | Path) -> Path:
    """Test (solid) and training (dotted) accuracy per epoch, mean over seeds, one colour per condition."""
    plt = _pyplot()
    summary = results["summary"]
    models = list(summary)
    fig, axes = plt.subplots(1, len(models), figsize=(8.5 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        for i, row in enumerate(summary[model].values()):
            curve = _pct(row["test_acc_curve_mean"])
            epochs = np.arange(1, len(curve) + 1)
            seen = np.isfinite(curve)  # epochs skipped by --eval-every are not drawn
            style = "--" if row["data"] == "clean" and row["breaker"] is None else "-"
            colour = plt.cm.tab10(i % 10)
            ax.plot(epochs[seen], curve[seen], style, marker="o" if seen.sum() < 15 else None, markersize=3,
                    color=colour, label=_wrap(row["label"]))
            train = _pct(row.get("train_acc_curve_mean") or [])
            if train.size and np.isfinite(train).any():
                ax.plot(np.arange(1, len(train) + 1), train, ":", color=colour, linewidth=1)
        ax.plot([], [], ":", color="grey", linewidth=1, label="(dotted: training accuracy)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%), mean over seeds")
        ax.set_ylim(0, 100)
        ax.set_title(_title(model, results), fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def write_figures(results: Mapping[str, Any], out: str | Path) -> list[str]:
    """Both figures into ``out``; returns their file names (none when there are no runs yet)."""
    if not results["summary"]:
        return []
    out = Path(out)
    plot_bars(results, out / BARS)
    plot_curves(results, out / CURVES)
    return [BARS, CURVES]
