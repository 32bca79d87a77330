"""What ``python -m defenses.detect`` writes: scores, detection.json, a Markdown summary and figures.

Layout of ``OUT``::

    OUT/<detector>/scores.npy    float64 [N] per row of the source, higher = more likely protected
    OUT/<detector>/scores.npy.sha256  its checksum (:mod:`ntga.workfiles`): --resume reuses only verified scores
    OUT/detection.json           settings, per-detector facts, AUROC / AUPRC when labels exist
    OUT/summary.md               the table, in Markdown
    OUT/<detector>/histogram.png score histogram, protected vs clean (with labels only)
    OUT/roc.png                  ROC curves of every detector (with labels only)
    OUT/rows.npy                 int64 [N] training-split indices of the rows (dataset-spec sources only)

Files are written atomically; detection.json says ``"complete": false`` until the last detector.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ntga import atomic, workfiles

from .metrics import roc_curve

DETECTION = "detection.json"
SUMMARY = "summary.md"
SCORES = "scores.npy"
ROC = "roc.png"
HISTOGRAM = "histogram.png"
ROWS = "rows.npy"


def save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    atomic.write_bytes(path, buffer.getvalue())


def save_scores(path: Path, scores: np.ndarray) -> None:
    """Writes one detector's scores [N] with a checksum sidecar (``scores.npy.sha256``)."""
    workfiles.save_array(path, np.asarray(scores, np.float64))


def load_scores(path: Path, n: int) -> np.ndarray | None:
    """Saved scores of ``n`` rows, or None when absent, damaged or not matching (then they are recomputed).

    Only scores that pass their checksum are trusted; a damaged or unverifiable file is
    reported on stderr and deleted (:func:`ntga.workfiles.read`).
    """
    scores = workfiles.load_array(path)
    if scores is None:
        return None
    if scores.dtype != np.float64 or scores.shape != (n,) or not np.all(np.isfinite(scores)):
        workfiles.discard(path, f"holds {scores.dtype}{list(scores.shape)}, expected finite float64[{n}]")
        return None
    return scores


def _pyplot():
    from defenses.evaluation.figures import _pyplot as pyplot  # one Agg set-up for every figure

    return pyplot()


def _save(plt, fig, path: Path) -> None:
    from defenses.evaluation.figures import _save as save

    save(plt, fig, path)


def plot_histogram(scores: np.ndarray, labels: np.ndarray, title: str, path: Path) -> None:
    """Score histograms of the protected and the clean rows (densities on shared bins)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    bins = np.histogram_bin_edges(scores, bins=40)
    for mask, name, colour in ((~labels, "clean", "tab:blue"), (labels, "protected", "tab:red")):
        ax.hist(scores[mask], bins=bins, density=True, alpha=0.55, color=colour, label=f"{name} ({mask.sum()})")
    ax.set_xlabel("suspicion score (higher = more likely protected)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], title: str, path: Path) -> None:
    """One ROC curve per detector (label: name and AUROC), with the chance diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for name, (fpr, tpr, area) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {area:.3f})", linewidth=1.4)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("false-positive rate (clean rows flagged)")
    ax.set_ylabel("true-positive rate (protected rows flagged)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.005)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    _save(plt, fig, path)


def write_figures(out: Path, scores: Mapping[str, np.ndarray], labels: np.ndarray, aurocs: Mapping[str, float],
                  title: str) -> list[str]:
    """Histograms per detector and the ROC figure; returns the written paths relative to ``out``."""
    names = []
    for name, s in scores.items():
        plot_histogram(s, labels, f"{name}: {title}", out / name / HISTOGRAM)
        names.append(f"{name}/{HISTOGRAM}")
    curves = {name: (*roc_curve(s, labels)[:2], aurocs[name]) for name, s in scores.items()}
    plot_roc(curves, title, out / ROC)
    return names + [ROC]


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def markdown(payload: Mapping[str, Any]) -> str:
    """The summary table of a detection.json payload."""
    source = payload["source"]
    lines = [f"# Detection: {source['what']}", "",
             f"{source['num_rows']} rows; " + (f"{source['num_protected']} protected "
                                               f"({100 * source['num_protected'] / source['num_rows']:.1f}%, "
                                               "from protected_positions.npy)" if source["labels"]
                                               else f"no protection labels ({source['labels_note']}): scores only"),
             ""]
    lines += ["| detector | AUROC | AUPRC | AUPRC of chance | time (s) | notes |", "|---|---|---|---|---|---|"]
    chance = source["num_protected"] / source["num_rows"] if source["labels"] else None
    for name, d in payload["detectors"].items():
        notes = []
        if "model_train_acc" in d["info"]:
            notes.append(f"suspect model train acc {100 * d['info']['model_train_acc']:.1f}%")
        if "linear_train_acc" in d["info"]:
            notes.append(f"linear train acc {100 * d['info']['linear_train_acc']:.1f}%")
        lines.append(f"| `{d['spec']}` | {_fmt(d.get('auroc'))} | {_fmt(d.get('auprc'))} | {_fmt(chance)} | "
                     f"{d['wall_time_s']:.1f} | {'; '.join(notes)} |")
    lines += ["", "Scores: `<detector>/scores.npy`, one float per row, higher = more likely protected."]
    if payload.get("figures"):
        lines += ["", "Figures: " + ", ".join(f"[{f}]({f})" for f in payload["figures"])]
    model = payload["settings"]["model"]
    lines += ["", f"Suspect model (cd, early-loss): `{model['model']}` {model['model_opts'] or ''}, "
              f"{model['epochs']} epoch(s), batch {model['batch_size']}, seed {payload['settings']['seed']}."]
    if payload.get("command"):
        lines += ["", f"Command: `{payload['command']}`"]
    return "\n".join(lines) + "\n"


def describe_labels(positions: np.ndarray | None, n: int, source_kind: str) -> tuple[np.ndarray | None, str]:
    """Per-row protection labels [N] bool (or None) and why there are none."""
    if source_kind != "poisons":
        return None, "a plain dataset"
    if positions is None:
        return None, "the poison directory has no protected_positions.npy: every row is protected"
    labels = np.zeros(n, bool)
    labels[np.asarray(positions, np.int64)] = True
    return labels, ""


__all__ = ["DETECTION", "HISTOGRAM", "ROC", "ROWS", "SCORES", "SUMMARY", "describe_labels", "load_scores",
           "markdown", "plot_histogram", "plot_roc", "save_npy", "save_scores", "write_figures"]
