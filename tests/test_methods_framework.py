"""The method registry, option parsing, --fraction and the shared method runner (via `random`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntga.budget import check_budget
from ntga.errors import UserInputError
from ntga.generate import main
from ntga.methods import METHOD_NAMES, MethodSpec, ProtectTask, config_from_options, get_method
from ntga.run.fraction import select_protected
from ntga.poisondir import read_poison_dir

TINY = ["--dataset", "digits", "--train-size", "60", "--target-size", "10", "--no-progress"]


@dataclass(frozen=True)
class _Cfg:
    eps: float | None = None
    steps: int = 3
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    name: str = "x"


_SPEC = MethodSpec(name="toy", summary="toy", config_type=_Cfg, protect=lambda task, cfg, key: None)


def test_registry_names_follow_the_design_contract():
    assert METHOD_NAMES == ("ntga", "random", "em", "cuda", "sep", "beo", "lsp", "ops", "ar", "radioactive")
    with pytest.raises(UserInputError, match="unknown method 'nope'.*accepted: ntga, random"):
        get_method("nope")


def test_options_are_coerced_from_the_annotations():
    cfg = config_from_options(_SPEC, ["steps=7", "flag=yes", "mode=b", "name=hello", "eps=8/255"])
    assert cfg == _Cfg(eps=8 / 255, steps=7, flag=True, mode="b", name="hello")
    assert config_from_options(_SPEC, ["eps=none"]).eps is None
    assert config_from_options(_SPEC, [], eps=0.1, steps=None).eps == 0.1


@pytest.mark.parametrize("items, shared, message", [
    (["bogus=1"], {}, "--method toy has no option 'bogus'; accepted: eps, steps, flag, mode, name"),
    (["steps=1.5"], {}, "steps must be a int, got '1.5'"),
    (["mode=c"], {}, "mode must be one of a, b, got 'c'"),
    (["flag=maybe"], {}, "flag must be a bool"),
    (["steps"], {}, "must look like KEY=VALUE"),
    ([], {"norm": "l2"}, "--norm does not apply to --method toy"),
])
def test_bad_options_get_one_clear_error(items, shared, message):
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_options(_SPEC, items, **shared)


def test_task_fills_empty_context():
    task = ProtectTask(x=np.zeros((3, 8, 8, 1), np.uint8), y=np.zeros(3, np.int64), num_classes=2)
    assert task.x_rest.shape == (0, 8, 8, 1) and task.y_target.shape == (0,)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 60), st.sampled_from([0.2, 0.5, 0.8, 1.0]), st.integers(0, 5))
def test_fraction_takes_a_rounded_share_of_every_class(n, fraction, seed):
    y = np.random.default_rng(n).integers(0, 3, size=n)
    expected = sum(int(np.floor(fraction * np.sum(y == k) + 0.5)) for k in range(3))
    if expected == 0:
        with pytest.raises(UserInputError, match="protects no image"):
            select_protected(y, 3, fraction, seed)
        return
    rows = select_protected(y, 3, fraction, seed)
    assert np.all(np.diff(rows) > 0)
    for k in range(3):
        count = int(np.sum(y == k))
        assert int(np.sum(y[rows] == k)) == int(np.floor(fraction * count + 0.5))
    assert np.array_equal(rows, select_protected(y, 3, fraction, seed))


def test_fraction_choice_depends_on_the_seed_and_is_validated():
    y = np.repeat(np.arange(4), 25)
    assert not np.array_equal(select_protected(y, 4, 0.5, 0), select_protected(y, 4, 0.5, 1))
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(UserInputError, match=r"--fraction must be in \(0, 1\]"):
            select_protected(y, 4, bad, 0)


@pytest.mark.slow
def test_random_class_wise_with_fraction_through_the_cli(tmp_path):
    out = tmp_path / "p"
    assert main([*TINY, "--method", "random", "--method-opt", "noise=class-wise", "--fraction", "0.5",
                 "--eps", "16/255", "--out", str(out)]) == 0
    poisons = read_poison_dir(out)
    from ntga.data import load_dataset, make_split

    split = make_split(load_dataset("digits"), train_size=60, target_size=10, seed=0)
    rows = poisons.protected_positions
    assert rows is not None and 0 < len(rows) < 60
    clean_rows = np.setdiff1d(np.arange(60), rows)
    assert np.array_equal(poisons.x[clean_rows], split.x_train[clean_rows])
    delta = poisons.x[rows].astype(int) - split.x_train[rows].astype(int)
    assert np.abs(delta).max() <= 16 and np.any(delta != 0)
    m = poisons.manifest
    assert (m["method"], m["noise"], m["fraction"], m["num_poisoned"]) == ("random", "class-wise", 0.5, len(rows))
    check_budget(split.x_train, poisons.x, m["eps"], m["norm"])


def test_random_is_deterministic_and_budgeted(key):
    import jax

    spec = get_method("random")
    x = np.random.default_rng(0).integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    y = np.repeat(np.arange(3), 4).astype(np.int64)
    task = ProtectTask(x=x, y=y, num_classes=3)
    for noise in ("sample-wise", "class-wise"):
        cfg = spec.resolved(config_from_options(spec, [f"noise={noise}"]), (8, 8, 3))
        a, b = spec.protect(task, cfg, key), spec.protect(task, cfg, key)
        c = spec.protect(task, cfg, jax.random.fold_in(key, 1))
        assert np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)
        check_budget(x, a.x, 8 / 255, "linf")


def test_method_runs_refuse_a_used_directory_and_resume_a_finished_one(tmp_path, capsys):
    out = tmp_path / "p"
    main([*TINY, "--method", "random", "--out", str(out)])
    with pytest.raises(UserInputError, match="already holds an ntga.generate run; pass --resume"):
        main([*TINY, "--method", "random", "--out", str(out)])
    assert main([*TINY, "--method", "random", "--out", str(out), "--resume"]) == 0
    assert "already complete" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--method", "random", "--kernel", "cnn"], "--kernel applies to --method ntga only"),
    (["--method", "random", "--steps", "3"], "--steps does not apply to --method random"),
    (["--method", "ntga", "--method-opt", "a=1"], "--method ntga has no option 'a'; accepted: kernel, "),
    (["--method", "random", "--shard", "1/2"], r"--shard applies to block-wise methods \(ntga, beo\)"),
    (["--method", "random", "--fraction", "0"], r"--fraction must be in \(0, 1\]"),
])
def test_cli_rejects_flags_that_do_not_apply(tmp_path, argv, message):
    with pytest.raises(UserInputError, match=message):
        main([*TINY, *argv, "--out", str(tmp_path / "p")])


def test_list_opts_prints_settings_and_needs_no_out(capsys):
    assert main(["--method", "random", "--list-opts"]) == 0
    text = capsys.readouterr().out
    assert "noise = 'sample-wise'" in text and "eps = None" in text


@pytest.mark.slow
def test_ntga_is_a_method_of_the_registry_like_the_others(tmp_path, capsys):
    spec = get_method("ntga")
    assert spec.block_wise and get_method("beo").block_wise and not get_method("em").block_wise
    assert main(["--method", "ntga", "--list-opts"]) == 0
    text = capsys.readouterr().out
    assert "kernel = 'fnn'" in text and "t = None" in text and "--kernel-opt" in text
    # A flag and the same --method-opt give the same config, and 8/255 is accepted as a float.
    flags = main([*TINY, "--t", "16", "--eps", "8/255", "--steps", "2", "--out", str(tmp_path / "a")])
    opts = main([*TINY, "--method-opt", "t=16", "--method-opt", "eps=8/255", "--method-opt", "steps=2",
                 "--out", str(tmp_path / "b")])
    assert flags == opts == 0
    a, b = read_poison_dir(tmp_path / "a"), read_poison_dir(tmp_path / "b")
    np.testing.assert_array_equal(a.x, b.x)
    assert a.manifest["t"] == b.manifest["t"] == 16.0 and a.manifest["fraction"] == 1.0
    assert a.manifest["budget_norm"] == "linf" and "gp_target_acc_poisoned_mean" in a.manifest


@pytest.mark.slow
def test_ntga_with_fraction_leaves_the_other_rows_clean(tmp_path):
    out = tmp_path / "n"
    main([*TINY, "--fraction", "0.2", "--steps", "2", "--out", str(out)])
    poisons = read_poison_dir(out)
    from ntga.data import load_dataset, make_split

    split = make_split(load_dataset("digits"), train_size=60, target_size=10, seed=0)
    rows = poisons.protected_positions
    assert np.array_equal(rows, select_protected(split.y_train, 10, 0.2, 0))
    rest = np.setdiff1d(np.arange(60), rows)
    assert np.array_equal(poisons.x[rest], split.x_train[rest])
    assert not np.array_equal(poisons.x[rows], split.x_train[rows])
    assert poisons.manifest["fraction"] == 0.2 and poisons.manifest["num_poisoned"] == len(rows)


def test_protected_positions_are_validated_on_write(tmp_path):
    from ntga.poisondir import write_poison_dir

    x = np.zeros((4, 8, 8, 1), np.uint8)
    common = dict(x=x, y=np.zeros(4, np.int64), source_indices=np.arange(4), manifest={"method": "t"})
    with pytest.raises(UserInputError, match="protected_positions has position 4 but there are only 4 images"):
        write_poison_dir(tmp_path / "a", protected_positions=np.array([0, 4]), **common)
    with pytest.raises(UserInputError, match="protected_positions must be unique"):
        write_poison_dir(tmp_path / "b", protected_positions=np.array([1, 1]), **common)
    write_poison_dir(tmp_path / "c", protected_positions=np.array([2]), **common)
    assert read_poison_dir(tmp_path / "c").protected_positions.tolist() == [2]


def test_resume_of_a_finished_directory_made_with_other_settings_is_refused(tmp_path):
    out = tmp_path / "p"
    main([*TINY, "--method", "random", "--out", str(out)])
    with pytest.raises(UserInputError, match=r"different settings \(noise: was 'sample-wise', now 'class-wise'\)"):
        main([*TINY, "--method", "random", "--method-opt", "noise=class-wise", "--out", str(out), "--resume"])
    with pytest.raises(UserInputError, match="complete but was made with different settings"):
        main([*TINY, "--method", "random", "--eps", "0.1", "--out", str(out), "--resume"])


@pytest.mark.slow
def test_ntga_resume_of_a_finished_directory_checks_the_settings(tmp_path):
    out = tmp_path / "n"
    main([*TINY, "--steps", "1", "--out", str(out)])
    with pytest.raises(UserInputError, match="steps: was 1, now 2"):
        main([*TINY, "--steps", "2", "--out", str(out), "--resume"])


def test_a_fraction_that_protects_nothing_is_an_error(tmp_path):
    with pytest.raises(UserInputError, match="--fraction 0.01 protects no image"):
        main([*TINY, "--method", "random", "--fraction", "0.01", "--out", str(tmp_path / "p")])


def test_a_data_dependent_setting_error_leaves_no_directory_behind(tmp_path):
    out = tmp_path / "c"
    with pytest.raises(UserInputError):
        main([*TINY, "--method", "cuda", "--method-opt", "kernel_size=9", "--out", str(out)])
    assert not out.exists()
    main([*TINY, "--method", "cuda", "--out", str(out)])  # the corrected rerun needs no cleanup


def test_cuda_passphrase_from_the_environment_is_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("NTGA_TEST_SECRET", "correct horse battery staple")
    out = tmp_path / "c"
    main([*TINY, "--method", "cuda", "--method-opt", "private_key_env=NTGA_TEST_SECRET", "--out", str(out)])
    assert all("correct horse" not in f.read_text(errors="ignore") for f in out.rglob("*.json"))
    main([*TINY, "--method", "cuda", "--method-opt", "private_key=correct horse battery staple",
          "--out", str(tmp_path / "d")])
    assert np.array_equal(read_poison_dir(out).x, read_poison_dir(tmp_path / "d").x)
    with pytest.raises(UserInputError, match="NTGA_UNSET_VAR: that environment variable is unset"):
        main([*TINY, "--method", "cuda", "--method-opt", "private_key_env=NTGA_UNSET_VAR",
              "--out", str(tmp_path / "e")])
