"""Collects experiments/detection/<results>/<method>-<fraction>/{detect,eval,oracle} into results.md.

Usage: python experiments/detection/summarize.py experiments/detection/mnist
"""

import json
import sys
from pathlib import Path

root = Path(sys.argv[1])
det_rows, acc_rows, detectors = [], [], []
for case in sorted(p for p in root.iterdir() if (p / "detect" / "detection.json").exists()):
    d = json.loads((case / "detect" / "detection.json").read_text())
    for name in d["detectors"]:
        if name not in detectors:
            detectors.append(name)
    det_rows.append((case.name, {n: e for n, e in d["detectors"].items()}))
    acc = {}
    for part in ("eval", "oracle"):
        f = case / part / "results.json"
        if f.exists():
            for run in json.loads(f.read_text())["runs"]:
                acc.setdefault(run["condition"] if part == "eval" else "oracle", []).append(run["final_test_acc"])
    acc_rows.append((case.name, acc))

lines = [f"# Detection of protected samples ({root})", "", "AUROC (AUPRC) per detector; chance AUROC is 0.5, "
         "chance AUPRC the protected share.", "", "| method-fraction | " + " | ".join(detectors) + " |",
         "|---|" + "---|" * len(detectors)]
for case, entries in det_rows:
    cells = [f"{entries[n]['auroc']:.3f} ({entries[n]['auprc']:.3f})" if n in entries else "–" for n in detectors]
    lines.append(f"| {case} | " + " | ".join(cells) + " |")
conditions = []
for _, acc in acc_rows:
    conditions += [c for c in acc if c not in conditions]
lines += ["", "Final test accuracy (%), mean over seeds:", "", "| method-fraction | " + " | ".join(conditions) + " |",
          "|---|" + "---|" * len(conditions)]
for case, acc in acc_rows:
    cells = [f"{100 * sum(acc[c]) / len(acc[c]):.2f}" if c in acc else "–" for c in conditions]
    lines.append(f"| {case} | " + " | ".join(cells) + " |")
(root / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
