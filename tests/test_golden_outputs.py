"""Golden hashes: refactors must not change what ``ntga.generate`` writes.

Each configuration below is a small ``python -m ntga.generate`` run (the README's
digits job, every registered method on a digits subset, a ``--fraction`` run, a
sharded-then-resumed run); the sha256 of its ``x_train.npy`` must equal the value
recorded in ``fixtures/golden_hashes.json``. Three tiny victim trainings guard the
trainer the same way (the hash of their accuracy and loss curves). The values were recorded before the
architecture refactor (issue 10) moved any code; a change that alters a poison on
purpose must re-record them (``python tests/test_golden_outputs.py``) and say why
in its commit. The tests run in-process with the suite's settings (float64
enabled by conftest), which is how they were recorded.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "fixtures" / "golden_hashes.json"
SUBSET = ["--dataset", "digits", "--train-size", "160", "--target-size", "40", "--test-size", "40", "--seed", "3"]

# name -> list of argv runs (all but the last write into the same --out; the last one's output is hashed)
CONFIGS: dict[str, list[list[str]]] = {
    "readme-digits-ntga": [["--dataset", "digits"]],
    "ntga-cnn-l2": [[*SUBSET, "--kernel", "cnn", "--norm", "l2", "--eps", "1", "--steps", "3", "--t", "16",
                     "--block-size", "64"]],
    "ntga-fgsm-float32": [[*SUBSET, "--steps", "1", "--step-size", "0.3", "--dtype", "float32"]],
    "ntga-fraction": [[*SUBSET, "--fraction", "0.5", "--steps", "4", "--block-size", "32"]],
    "ntga-shard-then-resume": [[*SUBSET, "--steps", "4", "--block-size", "48", "--shard", "1/2"],
                               [*SUBSET, "--steps", "4", "--block-size", "48", "--resume"]],
    "random": [[*SUBSET, "--method", "random"]],
    "random-class-wise": [[*SUBSET, "--method", "random", "--method-opt", "noise=class-wise", "--eps", "8/255"]],
    "em": [[*SUBSET, "--method", "em", "--method-opt", "steps=3", "--method-opt", "train_steps=3",
            "--method-opt", "max_rounds=2", "--method-opt", "surrogate_width=4"]],
    "cuda": [[*SUBSET, "--method", "cuda", "--method-opt", "private_key=7"]],
    "sep": [[*SUBSET, "--method", "sep", "--method-opt", "checkpoints=2", "--method-opt", "epochs=2",
             "--method-opt", "surrogate_width=4", "--steps", "3"]],
    "beo": [[*SUBSET, "--method", "beo", "--steps", "3", "--method-opt", "block_size=64",
             "--method-opt", "reference_size=64"]],
    "lsp": [[*SUBSET, "--method", "lsp"]],
    "ops": [[*SUBSET, "--method", "ops"]],
    "ar": [[*SUBSET, "--method", "ar"]],
    "em-fraction": [[*SUBSET, "--method", "em", "--fraction", "0.25", "--method-opt", "steps=2",
                     "--method-opt", "train_steps=2", "--method-opt", "max_rounds=1",
                     "--method-opt", "surrogate_width=4"]],
}


# Victim training (the trainer's outputs): (model, model options, vmapped seeds?) on 256 digits, 2 epochs.
TRAIN_CONFIGS = {
    "train-small-cnn": ("small-cnn", {"width": 8}, False),
    "train-fast-resnet": ("fast-resnet", {"width": 8}, False),
    "train-fnn-relu-vmapped": ("fnn-relu", {"width": 16}, True),
}


def run_training(name: str) -> str:
    """sha256 of the per-epoch test accuracy and training loss curves of training configuration ``name``."""
    import jax
    import numpy as np

    from ntga.data import load_dataset
    from ntga.train import TrainConfig, train_many_seeds

    model, options, vmapped = TRAIN_CONFIGS[name]
    ds = load_dataset("digits")
    keys = jax.random.split(jax.random.key(1), 2 if vmapped else 1)
    results = train_many_seeds(model, ds.x_train[:256], ds.y_train[:256], ds.x_test[:64], ds.y_test[:64],
                               TrainConfig(epochs=2, batch_size=32), keys, progress=False, model_kwargs=options,
                               vmap=vmapped)
    curves = np.stack([np.concatenate([r.test_acc_curve, r.train_loss_curve]) for r in results])
    return hashlib.sha256(curves.astype(np.float64).tobytes()).hexdigest()


def run_config(name: str, root: Path) -> str:
    """Runs configuration ``name`` into ``root/name`` and returns the sha256 of its x_train.npy."""
    from ntga.generate import main

    out = root / name
    for argv in CONFIGS[name]:
        main([*argv, "--out", str(out), "--no-progress"])
    return hashlib.sha256((out / "x_train.npy").read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_generate_output_is_unchanged(name, tmp_path):
    expected = json.loads(GOLDEN.read_text())
    assert name in expected, f"no golden hash recorded for {name}; run python {__file__}"
    assert run_config(name, tmp_path) == expected[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAIN_CONFIGS))
def test_training_is_unchanged(name):
    expected = json.loads(GOLDEN.read_text())
    assert name in expected, f"no golden hash recorded for {name}; run python {__file__}"
    assert run_training(name) == expected[name]


def _record() -> None:
    """Records every configuration's hash (run by hand, with the suite's float64 setting)."""
    import tempfile

    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    with tempfile.TemporaryDirectory() as tmp:
        hashes = {name: run_config(name, Path(tmp)) for name in sorted(CONFIGS)}
    hashes.update({name: run_training(name) for name in sorted(TRAIN_CONFIGS)})
    GOLDEN.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(hashes)} hashes to {GOLDEN}")


if __name__ == "__main__":
    sys.exit(_record())
