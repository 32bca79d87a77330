"""The poison directory: what ``ntga.generate`` writes and ``defenses.evaluate`` reads.

Layout (format version 1)::

    out/
      x_train.npy         uint8 [N, H, W, C]  protected training images (C in 1, 3)
      y_train.npy         int64 [N]           their labels (may differ from the clean ones)
      source_indices.npy  int64 [N]           indices into the source dataset's training split
      target_indices.npy  int64 [M]           the attack's held-out target set (optional)
      protected_positions.npy int64 [P]       positions (rows of x_train) that carry protection,
                                              when only a fraction was protected (optional; absent = all,
                                              or, for a secret mark (radioactive), kept in the private key)
      preview.png                             clean / poisoned / amplified difference (optional; never
                                              for a secret mark)
      manifest.json                           written LAST; its presence marks the directory complete

Every array is a plain ``.npy`` file readable with ``np.load(..., allow_pickle=False)``,
so the protected data can be used from PyTorch or anything else that reads numpy.
The manifest records the generation settings verbatim plus the sha256, shape and
dtype of every array file, which :func:`verify_poison_dir` checks before anything
trusts the arrays. Images are stored as uint8, so the budget must hold *after*
rounding: :func:`ntga.pixels.quantize_to_budget` rounds within the budget and
:func:`ntga.budget.check_budget` checks it (the writer runs it when given the clean images).

The budget check lives in :mod:`ntga.budget` and the norms it measures in
:mod:`ntga.pixels` (``check_budget`` and ``perturbation_norms`` stay importable
from here), the PNG export in :mod:`ntga.export`. Modules:
``layout`` (file names, :class:`PoisonSet`), ``checks`` (validation of arrays and
manifest values), ``write`` (:func:`write_poison_dir`) and ``read``
(:func:`read_poison_dir`, :func:`verify_poison_dir`).
"""

from ntga.budget import check_budget
from ntga.pixels import perturbation_norms
from ntga.poisondir.layout import (ARRAY_FILES, FORMAT_VERSION, MANIFEST, PREVIEW, PROTECTED_FILE, REQUIRED_FILES,
                                   RESERVED_KEYS, SOURCE_FILE, TARGET_FILE, X_FILE, Y_FILE, PoisonSet)
from ntga.poisondir.read import read_poison_dir, verify_poison_dir
from ntga.poisondir.write import write_poison_dir

# check_budget (ntga.budget) and perturbation_norms (ntga.pixels) are re-exported
# so existing ``from ntga.poisondir import ...`` keeps working.
__all__ = [
    "ARRAY_FILES", "FORMAT_VERSION", "MANIFEST", "PREVIEW", "PROTECTED_FILE", "PoisonSet", "REQUIRED_FILES", "RESERVED_KEYS",
    "SOURCE_FILE", "TARGET_FILE", "X_FILE", "Y_FILE", "check_budget", "perturbation_norms",
    "read_poison_dir", "verify_poison_dir", "write_poison_dir",
]
