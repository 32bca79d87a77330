"""The evaluation's pieces without training: conditions, model options, results store,
aggregation (mean ± std, gap recovered), Markdown and figures, on synthetic runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from defenses.breakers import parse_breakers
from defenses.evaluation import (ResultsStore, Victim, check_victim, make_conditions, markdown, parse_model_opts,
                                 write_figures)
from defenses.evaluation.report import MIN_GAP
from ntga.train import TrainConfig
from ntga.errors import UserInputError

CONFIG = {"epochs": 3, "batch_size": 8, "optimizer": "adam", "lr": 0.001, "momentum": 0.0, "weight_decay": 0.0,
          "schedule": "constant", "augment": False, "loss": "ce", "standardize": True, "eval_every": 1}


def conditions(specs="none,bdr@bits=1", **kw):
    return [c.to_json() for c in make_conditions(parse_breakers(specs), poisoned=True, **kw)]


def run(model, condition, seed, final, curve=None):
    curve = curve or [final / 2, None, final]
    return {"model": model, "condition": condition, "seed": seed, "key_seed": seed, "final_test_acc": final,
            "peak_test_acc": max(v for v in curve if v is not None), "peak_epoch": 3, "test_acc_curve": curve,
            "train_acc_curve": [0.5, 0.6, 0.7], "train_loss_curve": [2.0, 1.5, 1.0], "wall_time_s": 1.0,
            "images_per_s": 10.0, "seeds_trained_together": 1}


def make_store(tmp_path, runs, seeds=2, mode="poisons"):
    plan = {"models": ["fnn"], "conditions": conditions() if mode == "poisons" else
            [c.to_json() for c in make_conditions(parse_breakers("none,bdr@bits=1"), poisoned=False)],
            "seeds": seeds}
    info = {"data": {"poisons": "p", "dataset": "digits", "num_train": 8, "num_test": 4, "image_shape": [8, 8, 1]},
            "poison_manifest": {"method": "ntga", "eps": 0.3}, "models": {"fnn": {"train_config": CONFIG,
                                                                                   "model_opts": {"width": 4}}}}
    settings = {"mode": mode, "dataset_content_hash": "ab" * 32, "base_seed": 0, "train_config": {"epochs": 3}}
    store = ResultsStore.open(tmp_path, settings=settings, plan=plan, info=info, resume=False)
    for r in runs:
        store.add(r)
    return store


# ----------------------------------------------------------------------------- conditions and options


def test_conditions_baselines_first_none_and_duplicates_dropped():
    rows = make_conditions(parse_breakers("jpeg,none,bdr@bits=1,jpeg@quality=10"), poisoned=True,
                           breakers_on_clean=True)
    assert [c.id for c in rows] == ["clean", "poisoned", "poisoned/jpeg", "poisoned/bdr@bits=1", "clean/jpeg",
                                    "clean/bdr@bits=1"]
    assert [c.label for c in rows][-2:] == ["clean + jpeg", "clean + bdr@bits=1"]
    assert [c.id for c in make_conditions(parse_breakers("none,jpeg"), poisoned=False)] == ["clean", "clean/jpeg"]


def test_model_opts_typed_and_per_model():
    opts = parse_model_opts(["width=16", "small-cnn:width=8", "resnet18:stages=1,1,1,1", "resnet18:dtype=bfloat16",
                             "lr=1e-3", "flag=true", "name=x"], ["small-cnn", "resnet18"])
    assert opts["small-cnn"] == {"width": 8, "lr": 1e-3, "flag": True, "name": "x"}
    assert opts["resnet18"]["stages"] == (1, 1, 1, 1) and opts["resnet18"]["dtype"] == "bfloat16"
    assert opts["resnet18"]["width"] == 16
    for bad, message in ((["width"], "KEY=VALUE"), (["cnn:width=2"], "not among --model"),
                         (["dtype=float8"], "dtype must be one of float32, bfloat16, float16")):
        with pytest.raises(UserInputError, match=message):
            parse_model_opts(bad, ["small-cnn", "resnet18"])


def test_check_victim_traces_the_model_on_the_image_shape():
    victim = Victim("small-cnn", {"width": 4}, TrainConfig(epochs=1, batch_size=4))
    check_victim(victim, (8, 8, 3), 10, 16)
    with pytest.raises(UserInputError, match="cannot train on 7x9x1 images: the victims need at least 8x8"):
        check_victim(victim, (7, 9, 1), 10, 16)
    with pytest.raises(UserInputError, match="--batch-size 4 exceeds the 3 training images"):
        check_victim(victim, (8, 8, 1), 10, 3)
    with pytest.raises(UserInputError, match="bad model override"):
        check_victim(Victim("small-cnn", {"depth": 3}, TrainConfig(batch_size=4)), (8, 8, 1), 10, 16)


# ----------------------------------------------------------------------------- aggregation


def test_mean_std_and_gap_recovered(tmp_path):
    runs = [run("fnn", "clean", 0, 0.9), run("fnn", "clean", 1, 0.8), run("fnn", "poisoned", 0, 0.1),
            run("fnn", "poisoned", 1, 0.2), run("fnn", "poisoned/bdr@bits=1", 0, 0.5),
            run("fnn", "poisoned/bdr@bits=1", 1, 0.6)]
    rows = make_store(tmp_path, runs).results()["summary"]["fnn"]
    assert rows["clean"]["final_mean"] == pytest.approx(0.85)
    assert rows["clean"]["final_std"] == pytest.approx(np.std([0.9, 0.8], ddof=1))
    assert rows["poisoned/bdr@bits=1"]["gap_recovered_final"] == pytest.approx((0.55 - 0.15) / (0.85 - 0.15))
    assert rows["clean"]["gap_recovered_final"] is None and rows["poisoned"]["gap_recovered_peak"] is None
    # Epochs that were not evaluated (None) are left out of the mean curve, not counted as 0.
    assert rows["clean"]["test_acc_curve_mean"] == [pytest.approx(0.425), None, pytest.approx(0.85)]
    text = markdown(make_store(tmp_path / "again", runs).results())
    assert "| bdr@bits=1 | 55.00 ± 7.07 | 55.00 ± 7.07 | 57.1% | 57.1% | 2 |" in text
    assert "| clean | 85.00 ± 7.07 |" in text and "Partial" not in text


def test_no_gap_no_ratio_and_a_single_seed_has_no_std(tmp_path):
    small = MIN_GAP / 2
    runs = [run("fnn", "clean", 0, 0.5 + small), run("fnn", "poisoned", 0, 0.5),
            run("fnn", "poisoned/bdr@bits=1", 0, 0.9)]
    results = make_store(tmp_path, runs, seeds=1).results()
    assert results["summary"]["fnn"]["poisoned/bdr@bits=1"]["gap_recovered_final"] is None
    assert results["summary"]["fnn"]["clean"]["final_std"] is None
    assert "| bdr@bits=1 | 90.00 | 90.00 | n/a | n/a | 1 |" in markdown(results)


def test_partial_results_say_so(tmp_path):
    store = make_store(tmp_path, [run("fnn", "clean", 0, 0.9)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert not results["complete"] and results["num_planned_runs"] == 6
    assert "Partial results: 1 of 6 runs finished" in markdown(store.results())
    with pytest.raises(ValueError, match="already recorded"):
        store.add(run("fnn", "clean", 0, 0.9))


def test_clean_mode_table_shows_the_cost_of_each_breaker(tmp_path):
    runs = [run("fnn", "clean", 0, 0.9), run("fnn", "clean/bdr@bits=1", 0, 0.7)]
    text = markdown(make_store(tmp_path, runs, seeds=1, mode="clean").results())
    assert "| clean + bdr@bits=1 | 70.00 | 70.00 | -20.00 | 1 |" in text and "gap recovered" not in text


def test_store_resume_rules(tmp_path):
    make_store(tmp_path, [run("fnn", "clean", 0, 0.9)])
    kwargs = dict(plan={"models": ["fnn"], "conditions": conditions("none,jpeg"), "seeds": 3},
                  info={"models": {"fnn": {"train_config": CONFIG, "model_opts": {"width": 4}}}})
    settings = {"mode": "poisons", "dataset_content_hash": "ab" * 32, "base_seed": 0, "train_config": {"epochs": 3}}
    with pytest.raises(UserInputError, match=r"already holds a defenses.evaluate run \(results.json\); pass --resume"):
        ResultsStore.open(tmp_path, settings=settings, resume=False, **kwargs)
    with pytest.raises(UserInputError, match="different settings .*base_seed: 0 before, 1 now"):
        ResultsStore.open(tmp_path, settings={**settings, "base_seed": 1}, resume=True, **kwargs)
    store = ResultsStore.open(tmp_path, settings=settings, resume=True, **kwargs)
    assert [c["id"] for c in store.plan["conditions"]] == ["clean", "poisoned", "poisoned/bdr@bits=1",
                                                          "poisoned/jpeg"]
    assert store.plan["seeds"] == 3 and store.done("fnn", "clean", 0) and not store.done("fnn", "clean", 1)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(UserInputError, match="not readable JSON"):
        ResultsStore.open(tmp_path, settings=settings, resume=True, **kwargs)


def test_figures_are_pngs(tmp_path):
    runs = [run("fnn", c, s, f) for c, f in (("clean", 0.9), ("poisoned", 0.1), ("poisoned/bdr@bits=1", 0.5))
            for s in (0, 1)]
    names = write_figures(make_store(tmp_path, runs).results(), tmp_path)
    assert names == ["accuracy_bars.png", "accuracy_curves.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".*.tmp*"))


def test_figure_titles_name_the_poison_and_one_seed_draws_no_error_bars(tmp_path, monkeypatch):
    from defenses.evaluation import figures

    results = make_store(tmp_path, [run("fnn", c, 0, f) for c, f in (("clean", 0.9), ("poisoned", 0.1))],
                         seeds=1).results()
    assert figures.poison_label(results) == "ntga (eps 0.3)"
    manifest = {"method": "ntga", "kernel": "cnn", "norm": "linf", "eps": 8 / 255}
    assert figures.poison_label({**results, "poison_manifest": manifest}) == "ntga (cnn kernel, linf eps 8/255)"
    assert figures.poison_label({**results, "settings": {"mode": "clean"}}) is None
    assert results["summary"]["fnn"]["clean"]["train_acc_curve_mean"] == [0.5, 0.6, 0.7]
    drawn = {}
    import matplotlib.axes

    real_bar, real_title = matplotlib.axes.Axes.bar, matplotlib.axes.Axes.set_title

    def bar(self, *args, **kwargs):
        drawn.setdefault("yerr", []).append(kwargs.get("yerr"))
        return real_bar(self, *args, **kwargs)

    def set_title(self, text, *args, **kwargs):
        drawn.setdefault("titles", []).append(text)
        return real_title(self, text, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", bar)
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", set_title)
    figures.write_figures(results, tmp_path)
    assert drawn["yerr"] == [None, None]
    assert all("poisons: ntga (eps 0.3)" in t for t in drawn["titles"])
    assert "one seed" in drawn["titles"][0] and "std" not in drawn["titles"][0]


def test_results_from_before_the_recipe_fields_resume_with_their_implicit_values(tmp_path):
    make_store(tmp_path, [run("fnn", "clean", 0, 0.9)])  # CONFIG has no nesterov/label_smoothing/warmup/tta
    settings = {"mode": "poisons", "dataset_content_hash": "ab" * 32, "base_seed": 0, "train_config": {"epochs": 3}}
    now = {**CONFIG, "nesterov": False, "label_smoothing": 0.0, "warmup": 0.0, "tta": "none"}
    kwargs = dict(plan={"models": ["fnn"], "conditions": conditions(), "seeds": 2}, settings=settings)
    ResultsStore.open(tmp_path, info={"models": {"fnn": {"train_config": now, "model_opts": {"width": 4}}}},
                      resume=True, **kwargs)
    with pytest.raises(UserInputError, match="tta: 'none' before, 'flip' now"):
        ResultsStore.open(tmp_path, info={"models": {"fnn": {"train_config": {**now, "tta": "flip"},
                                                             "model_opts": {"width": 4}}}}, resume=True, **kwargs)
