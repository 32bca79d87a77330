"""Figures of an evaluation (matplotlib, Agg backend: no display needed).

* ``accuracy_bars.png``: per victim, final and peak test accuracy per
  condition (mean over seeds, error bars = sample std), with the clean and
  poisoned final accuracy as reference lines.
* ``accuracy_curves.png``: per victim, test accuracy per epoch (mean over
  seeds), one line per condition.
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


def _title(model: str, results: Mapping[str, Any]) -> str:
    data = results["data"]
    return f"{model} on {data['dataset']} ({data['num_train']} train, {data['num_test']} test)"


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
            ax.bar(x + offset, means, 0.4, yerr=stds, capsize=3, color=colour, label=f"{kind} test accuracy")
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
        ax.set_title(f"{_title(model, results)}; mean ± std over {n} seed{'s' if n > 1 else ''}", fontsize=9)
        ax.legend(fontsize=7, loc="upper center", ncol=4, frameon=False)
        ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path)


def plot_curves(results: Mapping[str, Any], path: str | Path) -> Path:
    """Test accuracy per epoch (mean over seeds), one line per condition, one panel per victim."""
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
            ax.plot(epochs[seen], curve[seen], style, marker="o" if seen.sum() < 15 else None, markersize=3,
                    color=plt.cm.tab10(i % 10), label=_wrap(row["label"]))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%), mean over seeds")
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
