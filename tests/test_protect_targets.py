"""--protect-targets: every training image protected, the target set in a second pass (issue 16)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ntga.data import load_dataset
from ntga.errors import UserInputError
from ntga.generate import main
from ntga.poisondir import check_budget, read_poison_dir

# 48 training images in blocks of 16 against 30 held-out targets; the target pass then
# protects those 30 against 30 clean first-pass images.
TINY = ["--dataset", "digits", "--train-size", "48", "--target-size", "30", "--block-size", "16",
        "--steps", "3", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("protect")
    assert main([*TINY, "--out", str(base / "standard")]) == 0
    assert main([*TINY, "--protect-targets", "--out", str(base / "all")]) == 0
    return base


@pytest.mark.slow
def test_every_image_is_protected_and_the_first_pass_is_the_standard_run(runs):
    standard, every = read_poison_dir(runs / "standard"), read_poison_dir(runs / "all")
    assert every.x.shape == (78, 8, 8, 1) and every.protected_positions is None
    np.testing.assert_array_equal(every.x[:48], standard.x)  # bit for bit
    np.testing.assert_array_equal(every.source_indices[:48], standard.source_indices)
    np.testing.assert_array_equal(every.source_indices[48:], standard.target_indices)
    assert every.target_indices is None  # nothing is held out any more
    ds = load_dataset("digits")
    clean = ds.x_train[every.source_indices]
    np.testing.assert_array_equal(every.y, ds.y_train[every.source_indices])
    check_budget(clean, every.x, 0.3, "linf")
    # The target-set rows are really changed, not copied through.
    changed = np.abs(every.x[48:].astype(int) - clean[48:]).reshape(30, -1).max(axis=1)
    assert (changed > 0).all()


@pytest.mark.slow
def test_manifest_describes_the_second_pass(runs):
    m = json.loads((runs / "all" / "manifest.json").read_text())
    assert m["protect_targets"] is True and m["target_size"] == 0 and m["num_poisoned"] == 78
    p = m["target_pass"]
    assert p["protected_rows"] == 30 and "30 first-pass rows" in p["targets"]
    assert len(p["blocks"]) == 2 and p["settings"] == {}  # 30 images in blocks of 16
    assert p["gp_target_acc_poisoned_mean"] < p["gp_target_acc_clean_mean"]
    standard = json.loads((runs / "standard" / "manifest.json").read_text())
    assert standard["protect_targets"] is False and standard["target_size"] == 30


@pytest.mark.slow
def test_sharded_and_resumed_two_pass_run_equals_the_plain_one(runs, tmp_path):
    out = tmp_path / "sharded"
    assert main([*TINY, "--protect-targets", "--shard", "1/2", "--out", str(out)]) == 0
    assert not (out / "manifest.json").exists()  # shard 2's blocks of both passes are missing
    assert main([*TINY, "--protect-targets", "--shard", "2/2", "--resume", "--out", str(out)]) == 0
    np.testing.assert_array_equal(read_poison_dir(out).x, read_poison_dir(runs / "all").x)


def test_a_method_without_targets_protects_the_target_set_in_one_pass(tmp_path):
    out = tmp_path / "random"
    assert main([*TINY[:6], "--method", "random", "--protect-targets", "--fraction", "0.5", "--no-progress",
                 "--out", str(out)]) == 0
    poisons = read_poison_dir(out)
    assert len(poisons.x) == 78 and poisons.target_indices is None
    positions = poisons.protected_positions
    assert (positions < 48).any() and (positions >= 48).any()  # half of each part
    assert "target_pass" not in poisons.manifest and poisons.manifest["num_poisoned"] == len(positions)


@pytest.mark.slow
def test_refusals(tmp_path, runs):
    with pytest.raises(UserInputError, match="--protect-targets: this split holds no target set out"):
        main([*TINY[:4], "--target-size", "0", "--protect-targets", "--out", str(tmp_path / "a")])
    assert not (tmp_path / "a").exists()
    # A finished standard run is not returned for a two-pass one.
    with pytest.raises(UserInputError, match="protect_targets"):
        main([*TINY, "--protect-targets", "--resume", "--out", str(runs / "standard")])
