"""Writes the truly clean rows of a --fraction poison directory as IMAGES.npy,LABELS.npy (the oracle's training set).

Usage: python experiments/detection/oracle.py POISON_DIR OUT_DIR
The pair is evaluated with ``defenses.evaluate --poisons OUT/x.npy,OUT/y.npy --dataset SPEC --skip-clean``.
"""

import sys
from pathlib import Path

import numpy as np

from ntga.poisondir import read_poison_dir

poisons, out = read_poison_dir(sys.argv[1]), Path(sys.argv[2])
if poisons.protected_positions is None:
    sys.exit(f"error: {sys.argv[1]} has no protected_positions.npy (not a --fraction run)")
clean = np.setdiff1d(np.arange(len(poisons.y)), poisons.protected_positions)
out.mkdir(parents=True, exist_ok=True)
np.save(out / "x.npy", poisons.x[clean], allow_pickle=False)
np.save(out / "y.npy", poisons.y[clean], allow_pickle=False)
print(f"{out}: {len(clean)} clean rows of {len(poisons.y)}")
