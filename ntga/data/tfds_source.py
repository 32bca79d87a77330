"""``tfds:NAME`` - a tensorflow-datasets image classification dataset (optional extra).

TensorFlow is imported here and only here, when a ``tfds:`` spec is loaded;
nothing else in ``ntga`` imports it. Uses the ``train`` and ``test`` splits and
the ``image``/``label`` features (``as_supervised``), class names from the
label feature. tfds keeps its own prepared copy (``~/tensorflow_datasets`` or
``$TFDS_DATA_DIR``), so no second cache is kept; the content hash covers the
decoded arrays and the dataset name.
"""

from __future__ import annotations

import numpy as np

from ntga.data.dataset import Arrays, source_hasher, update_with_arrays
from ntga.errors import UserInputError

VERSION = 1


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise UserInputError(
            f"tfds: specs need tensorflow-datasets ({err}); install the extra with: pip install -e '.[tfds]'"
        ) from None
    return tfds


def load(name: str) -> tuple[Arrays, str]:
    """Loads ``train`` and ``test`` of tfds dataset ``name`` as arrays, and their content hash."""
    tfds = _import_tfds()
    try:
        builder = tfds.builder(name)
        builder.download_and_prepare()
        splits = tfds.as_numpy(builder.as_dataset(split=["train", "test"], batch_size=-1, as_supervised=True))
    except Exception as err:  # noqa: BLE001 - tfds raises many types (network, registry, split names)
        raise UserInputError(
            f"tfds:{name}: could not load the train and test splits ({type(err).__name__}: {err}). "
            "If this machine is offline, download it where there is network (tfds build or "
            "tfds.load) and copy the tensorflow_datasets folder, or use idx:/folder:/npz: with local files."
        ) from None
    label = builder.info.features["label"] if "label" in builder.info.features else None
    (x_train, y_train), (x_test, y_test) = splits
    names = getattr(label, "names", None) or [
        str(i) for i in range(int(max(np.max(y_train), np.max(y_test))) + 1)
    ]
    arrays = Arrays(
        x_train=np.asarray(x_train),
        y_train=np.asarray(y_train),
        x_test=np.asarray(x_test),
        y_test=np.asarray(y_test),
        class_names=tuple(names),
    )
    h = source_hasher("tfds", VERSION)
    h.update(name.encode() + b"\0")
    update_with_arrays(h, [(k, v) for k, v in arrays._asdict().items() if k != "class_names"])
    return arrays, h.hexdigest()
