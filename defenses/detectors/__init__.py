"""Detectors of protected samples: which rows of a dataset carry a protection (an availability poison).

Used by ``python -m defenses.detect`` (scores, AUROC/AUPRC against a
``--fraction`` run's ``protected_positions.npy``, figures) and by the
``filter`` breaker (drop the most suspicious rows, train on the rest)::

    from defenses.detectors import parse_detectors, score_rows
    [linear] = parse_detectors("linear")
    scores = score_rows(x_train, y_train, num_classes, linear, key=jax.random.key(0))   # [N], higher = more suspicious

Modules: ``registry`` (DETECTORS, parser, running one), ``model`` (the suspect
model trained on the data), ``cd`` (Cognitive Distillation), ``dynamics``
(early-loss, linear), ``metrics`` (AUROC, AUPRC, ROC, a label-free threshold),
``report`` (the files ``defenses.detect`` writes).
"""

from .metrics import auroc, average_precision, otsu_threshold, roc_curve
from .model import ModelConfig, SuspectModel, SuspectModels, train_suspect
from .registry import (DETECTORS, Detection, Detector, DetectorSpec, describe_detector, describe_detectors,
                       get_detector, parse_detector, parse_detectors, run_detector, score_rows)

__all__ = ["DETECTORS", "Detection", "Detector", "DetectorSpec", "ModelConfig", "SuspectModel", "SuspectModels",
           "auroc", "average_precision", "describe_detector", "describe_detectors", "get_detector", "otsu_threshold",
           "parse_detector", "parse_detectors", "roc_curve", "run_detector", "score_rows", "train_suspect"]
