"""The one options grammar (ntga.options) and every CLI form that uses it.

``name@key=value,key=value`` for kernels, methods, victims and breakers; values
typed from the config's annotations, ``8/255`` wherever a float is; one lookup
verb whose unknown-name error reads the same for every registry.
"""

from __future__ import annotations

import dataclasses
import string
from fractions import Fraction
from typing import Any, Literal, Sequence

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from defenses.breakers import BREAKERS, parse_breakers
from defenses.evaluate import list_opts as evaluate_list_opts
from defenses.evaluate import main as evaluate_main
from defenses.evaluate import parse_models
from defenses.evaluation import parse_model_opts
from ntga.attack import AttackConfig
from ntga.errors import UserInputError
from ntga.generate import build_parser, config_from_args, main as generate_main
from ntga.kernels import CONFIGS, kernel_options, make
from ntga.methods import METHOD_NAMES, get_method
from ntga.models import MODELS, get_model, model_options
from ntga.train import TrainConfig
from ntga.options import (OptionField, check_choice, check_keys, coerce, config_from_items, describe_options,
                          docstring_fields, format_spec, lookup, plain_text,
                          option_fields, parse_spec, split_specs, typed_items)


@dataclasses.dataclass(frozen=True)
class _Cfg:
    """A toy config."""

    rate: float = 0.5
    steps: int = 3
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    eps: float | None = None
    sizes: tuple[int, ...] = (1, 2)
    name: str = "x"


# ----------------------------------------------------------------------------- grammar

_names = st.from_regex(r"[a-z][a-z0-9]*(-[a-z0-9]+)?", fullmatch=True)
_keys = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_values = st.text(string.ascii_letters + string.digits + "./-_", min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(name=_names, items=st.dictionaries(_keys, _values, max_size=4))
def test_format_then_parse_round_trips(name, items):
    assert parse_spec(format_spec(name, items)) == (name, items)


@settings(max_examples=100, deadline=None)
@given(name=_names, items=st.dictionaries(_keys, _values, min_size=1, max_size=4))
def test_at_and_comma_separate_options_alike(name, items):
    at_form = name + "".join(f"@{k}={v}" for k, v in items.items())
    assert parse_spec(at_form) == parse_spec(format_spec(name, items))


def test_parse_spec_forms():
    assert parse_spec("jpeg") == ("jpeg", {})
    assert parse_spec(" em@noise=class-wise, step-size=8/255 ") == ("em", {"noise": "class-wise", "step_size": "8/255"})
    assert parse_spec("resnet18@stages=1,1,1,1,width=8") == ("resnet18", {"stages": "1,1,1,1", "width": "8"})
    assert parse_spec("cuda@private_key=a=b") == ("cuda", {"private_key": "a=b"})


@pytest.mark.parametrize("text, message", [
    ("@depth=3", "no name in '@depth=3'.*e.g. "),
    ("cnn@depth", "'depth' in 'cnn@depth' is not key=value"),
    ("cnn@", "is not key=value"),
    ("cnn@depth=3,depth=4", "option 'depth' given twice"),
    ("cnn@9x=1", "'9x' is not a key=value option"),
])
def test_malformed_specs_name_the_text_and_show_an_example(text, message):
    with pytest.raises(UserInputError, match=message):
        parse_spec(text, "--kernel", "cnn@depth=3")


def test_split_specs_keeps_options_and_list_values_with_their_spec():
    assert split_specs("none,grayscale+jpeg@quality=20,bdr") == ["none", "grayscale+jpeg@quality=20", "bdr"]
    assert split_specs("blur@kernel=5,sigma=0.5,jpeg") == ["blur@kernel=5,sigma=0.5", "jpeg"]
    assert split_specs("resnet18@stages=1,1,1,1,cnn") == ["resnet18@stages=1,1,1,1", "cnn"]
    assert split_specs("fnn,width=3") == ["fnn", "width=3"]  # no options before: a new (bad) spec
    with pytest.raises(UserInputError, match="--model is empty"):
        split_specs(" ", "--model")


# ----------------------------------------------------------------------------- typing


@settings(max_examples=100, deadline=None)
@given(num=st.integers(-1000, 1000), den=st.integers(1, 1000))
def test_fractions_equal_their_value_for_every_float_field(num, den):
    text = f"{num}/{den}"
    assert coerce(text, float, "x") == num / den == float(Fraction(num, den))
    assert coerce(text, float | None, "x") == num / den
    assert config_from_items(_Cfg, {"rate": text, "eps": text}) == _Cfg(rate=num / den, eps=num / den)


def test_8_255_is_accepted_by_every_float_field_of_every_registry():
    float_fields = []
    for name in METHOD_NAMES:
        spec = get_method(name)
        float_fields += [(spec.config_type, key) for key, f in option_fields(spec.config_type).items()
                         if f.annotation in (float, float | None)]
    assert len(float_fields) > 10
    for config_type, key in float_fields:
        value = typed_items(option_fields(config_type), {key: "8/255"}, "x")[key]
        assert value == 8 / 255, (config_type, key)
    for name in CONFIGS:
        assert typed_items(kernel_options(name), {"W_std": "8/255", "b_std": "8/255"}, "x") == {
            "W_std": 8 / 255, "b_std": 8 / 255}
    for name, spec in MODELS.items():
        for key, f in model_options(spec).items():
            if f.annotation is float:
                assert typed_items(model_options(spec), {key: "8/255"}, "x")[key] == 8 / 255
    for factory in BREAKERS.values():
        for option in factory.options:
            if option.kind is float:
                assert option.parse("8/255", factory.name) == 8 / 255


def test_coerce_rules():
    assert coerce("7", int, "x") == 7 and coerce("1e1", int, "x") == 10
    assert coerce("yes", bool, "x") is True and coerce("off", bool, "x") is False
    assert coerce("none", int | None, "x") is None and coerce("4", int | None, "x") == 4
    assert coerce("b", Literal["a", "b"], "x") == "b"
    assert coerce("1,2,3", tuple[int, ...], "x") == (1, 2, 3)
    assert coerce("5,5", tuple[int, int], "x") == (5, 5)
    assert coerce("1,1", Sequence[int], "x") == (1, 1)
    assert coerce("2", int | tuple[int, int], "x") == 2 and coerce("2,3", int | tuple[int, int], "x") == (2, 3)
    assert coerce("hello", str, "x") == "hello"
    # Nothing declared: the old inference (bool words, tuples, int, float, string).
    assert [coerce(t, Any, "x") for t in ("true", "1,2", "3", "1e-3", "x")] == [True, (1, 2), 3, 1e-3, "x"]


@pytest.mark.parametrize("text, annotation, message", [
    ("1.5", int, "where must be a int, got '1.5'"),
    ("x", float, "where must be a float, got 'x'"),
    ("1/0", float, "where must be a float, got '1/0'"),
    ("maybe", bool, "where must be a bool"),
    ("c", Literal["a", "b"], "where must be one of a, b, got 'c'"),
    ("1,2,3", tuple[int, int], "where must be 2 comma-separated values"),
    ("x", int | tuple[int, int], "where must be a int or tuple"),
])
def test_coerce_errors_name_the_value_and_the_type(text, annotation, message):
    with pytest.raises(UserInputError, match=message.replace("[", r"\[")):
        coerce(text, annotation, "where")


def test_config_from_items_and_unknown_keys():
    assert config_from_items(_Cfg, {"steps": "7", "sizes": "3,4", "mode": "b"}) == _Cfg(steps=7, sizes=(3, 4), mode="b")
    assert config_from_items(_Cfg, {"steps": "7"}, steps=2, rate=0.1) == _Cfg(steps=7, rate=0.1)
    with pytest.raises(UserInputError, match="toy has no option 'bogus'; accepted: rate, steps, flag, mode, eps"):
        config_from_items(_Cfg, {"bogus": "1"}, "toy")
    assert typed_items({}, {"width": "8"}, "m", strict=False) == {"width": 8}


def test_describe_options_lists_defaults_and_the_docstring():
    text = describe_options(_Cfg, "toy: a toy", note="settings:")
    assert text.splitlines()[:3] == ["toy: a toy", "settings:", "  rate = 0.5"]
    assert "  mode = 'a'" in text and text.endswith("A toy config.")
    table = {"quality": OptionField(int, 10, "libjpeg quality")}
    assert describe_options(table, "jpeg").splitlines()[1] == "  quality = 10  (libjpeg quality)"
    assert "(no options)" in describe_options({}, "none")


@dataclasses.dataclass(frozen=True)
class _Documented:
    """A config with ``markup``, see :func:`ntga.options.lookup`.

    Attributes:
      steps: how many ``steps``
        (continued on a second line).
      mode (str): :class:`~ntga.options.OptionField` or ``b``.

    Prose after the section stays.
    """

    steps: int = 3
    mode: str = "a"


def test_list_opts_text_has_per_option_help_and_no_markup():
    prose, helps = docstring_fields(_Documented.__doc__)
    assert helps == {"steps": "how many steps (continued on a second line).", "mode": "OptionField or b."}
    assert prose == "A config with markup, see ntga.options.lookup.\n\nProse after the section stays."
    text = describe_options(_Documented, "toy")
    assert text.splitlines()[1:3] == ["  steps = 3  (how many steps (continued on a second line))",
                                      "  mode = 'a'  (OptionField or b)"]
    assert "`" not in text and "Attributes" not in text
    assert plain_text(":mod:`ntga.pixels` and ``x``") == "ntga.pixels and x"
    # Every registered method's and kernel's --list-opts text: help for every option, no markup.
    for name in METHOD_NAMES:
        spec = get_method(name)
        _, helps = docstring_fields(spec.config_type.__doc__)
        assert set(helps) >= {f.name for f in dataclasses.fields(spec.config_type)}, name
    for name in CONFIGS:
        text = describe_options(kernel_options(name), "k", doc=CONFIGS[name].__doc__)
        assert "`" not in text and all("  (" in line for line in text.splitlines()[1:len(kernel_options(name)) + 1])
    long = describe_options({"x": OptionField(int, 1, "word " * 40)}, "t")
    assert max(map(len, long.splitlines())) <= 100 and long.splitlines()[2].startswith("      word")


# ----------------------------------------------------------------------------- lookup


@pytest.mark.parametrize("call, kind, accepted", [
    (lambda: get_method("nope"), "method", "ntga, random, em"),
    (lambda: make("nope"), "kernel", "fnn, cnn"),
    (lambda: get_model("nope"), "model", "fnn, fnn-relu, cnn"),
    (lambda: parse_breakers("nope"), "breaker", "none, grayscale, jpeg"),
])
def test_every_registry_has_the_same_unknown_name_message(call, kind, accepted):
    with pytest.raises(UserInputError, match=rf"^unknown {kind} 'nope'; accepted: {accepted}"):
        call()


@pytest.mark.parametrize("call, message", [
    (lambda: make("fnn", activation="tanh"), "activation='tanh' is invalid; accepted: erf, relu"),
    (lambda: make("fnn", bogus=1), "kernel 'fnn' has no option 'bogus'; accepted: depth"),
    (lambda: TrainConfig(optimizer="rmsprop"), "optimizer='rmsprop' is invalid; accepted: sgd"),
    (lambda: AttackConfig(eps=0.1, norm="l1"), "norm='l1' is invalid; accepted: linf, l2"),
    (lambda: get_method("em").config_type(surrogate="vgg"), "surrogate='vgg' is invalid; accepted: fnn"),
])
def test_choices_and_keys_have_one_message_everywhere(call, message):
    with pytest.raises(UserInputError, match="^" + re.escape(message)):
        call()


def test_check_choice_and_check_keys():
    assert check_choice("mode", "b", ("a", "b")) == "b"
    with pytest.raises(UserInputError, match=r"^mode=\['a'\] is invalid; accepted: a, b$"):
        check_choice("mode", ["a"], ("a", "b"))  # unhashable: refused, not a TypeError
    check_keys(["a"], ("a", "b"), "thing")
    with pytest.raises(UserInputError, match=r"^thing has no option 'c'; accepted: none$"):
        check_keys(["c"], (), "thing")


def test_lookup():
    assert lookup({"a": 1, "b": 2}, "b", "thing") == 2
    with pytest.raises(UserInputError, match=r"^unknown thing 'c'; accepted: a, b$"):
        lookup({"a": 1, "b": 2}, "c", "thing")


# ----------------------------------------------------------------------------- CLI forms

TINY = ["--dataset", "digits", "--out", "unused"]


def _config(*argv):
    args = build_parser().parse_args([*TINY, *argv])
    name, items = parse_spec(args.method)
    return config_from_args(args, get_method(name), items)


def test_generate_method_spec_equals_method_opt():
    assert _config("--method", "em@noise=class-wise,step-size=2/255") == _config(
        "--method", "em", "--method-opt", "noise=class-wise", "--method-opt", "step_size=2/255")
    assert _config("--method", "random@eps=8/255").eps == 8 / 255
    with pytest.raises(UserInputError, match="'noise' is given both in --method and in --method-opt"):
        _config("--method", "random@noise=class-wise", "--method-opt", "noise=sample-wise")


def test_generate_kernel_spec_equals_kernel_opt_and_is_typed():
    spec = _config("--kernel", "cnn@depth=3,W_std=1.76,b_std=8/255,stride=2")
    opts = _config("--kernel", "cnn", "--kernel-opt", "depth=3", "--kernel-opt", "W_std=1.76",
                   "--kernel-opt", "b_std=8/255", "--kernel-opt", "stride=2")
    assert spec == opts and spec.kernel == "cnn"
    assert spec.kernel_overrides == {"depth": 3, "W_std": 1.76, "b_std": 8 / 255, "stride": 2}
    assert type(spec.kernel_overrides["depth"]) is int and type(spec.kernel_overrides["W_std"]) is float
    assert _config("--kernel", "fnn").kernel_overrides == {}
    with pytest.raises(UserInputError, match="--kernel fnn has no option 'stride'; accepted: depth, activation"):
        _config("--kernel-opt", "stride=2")
    with pytest.raises(UserInputError, match="unknown kernel 'rnn'; accepted: fnn, cnn"):
        _config("--kernel", "rnn@depth=2")


def test_generate_list_opts_for_methods_and_kernels(capsys):
    assert generate_main(["--method", "em@noise=class-wise", "--list-opts"]) == 0
    assert "--method em:" in capsys.readouterr().out
    assert generate_main(["--kernel", "cnn", "--list-opts"]) == 0
    out = capsys.readouterr().out
    assert "--method ntga:" in out and "--kernel cnn: overrides" in out and "  dense_layers = 3" in out
    assert generate_main(["--list-opts", "kernel:fnn"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("--kernel fnn:") and "  readout = False" in out
    assert generate_main(["--list-opts", "method:cuda"]) == 0
    assert capsys.readouterr().out.startswith("--method cuda:")
    with pytest.raises(UserInputError, match="--list-opts takes KIND:NAME with KIND one of method, kernel"):
        generate_main(["--list-opts", "model:fnn"])
    with pytest.raises(UserInputError, match="unknown kernel 'x'"):
        generate_main(["--list-opts", "kernel:x"])


def test_evaluate_model_spec_equals_model_opt():
    specs = parse_models("small-cnn@width=8,dtype=bfloat16,resnet18@stages=1,1,1,1")
    assert [name for name, _ in specs] == ["small-cnn", "resnet18"]
    names = [name for name, _ in specs]
    from_specs = parse_model_opts([], names, dict(specs))
    from_opts = parse_model_opts(["small-cnn:width=8", "small-cnn:dtype=bfloat16", "resnet18:stages=1,1,1,1"], names)
    assert from_specs == from_opts == {"small-cnn": {"width": 8, "dtype": "bfloat16"},
                                      "resnet18": {"stages": (1, 1, 1, 1)}}
    assert parse_model_opts(["width=4"], names, dict(specs))["small-cnn"]["width"] == 8  # the model's own wins
    assert parse_model_opts(["dropout=1"], ["cnn"])["cnn"] == {"dropout": 1.0}  # typed from the module
    with pytest.raises(UserInputError, match="'width' of model 'small-cnn' is given both"):
        parse_model_opts(["small-cnn:width=4"], names, dict(specs))
    with pytest.raises(UserInputError, match="model small-cnn: width must be a int, got 'wide'"):
        parse_model_opts([], ["small-cnn"], dict(parse_models("small-cnn@width=wide")))


def test_evaluate_list_opts_for_models_and_breakers(capsys):
    assert evaluate_main(["--list-opts", "model:resnet18"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model resnet18:") and "  stages = (2, 2, 2, 2)" in out and "  dtype = 'float32'" in out
    assert evaluate_main(["--list-opts", "breaker:adversarial-training"]) == 0
    out = capsys.readouterr().out
    assert "  eps = 8/255 for linf, 0.5 for l2" in out and "  norm = 'linf'  (threat model; one of linf, l2)" in out
    text = evaluate_list_opts(True, ["fnn", "small-cnn"], "none,grayscale+jpeg@quality=20")
    assert [line for line in text.splitlines() if line and not line.startswith((" ", "options", "source"))] == [
        f"model fnn: {MODELS['fnn'].description}", f"model small-cnn: {MODELS['small-cnn'].description}",
        "breaker none: No defense: train on the data as given.",
        f"breaker grayscale: {BREAKERS['grayscale'].description}", f"breaker jpeg: {BREAKERS['jpeg'].description}"]
    with pytest.raises(UserInputError, match="unknown model 'vgg'; accepted: fnn"):
        evaluate_main(["--list-opts", "model:vgg"])
    with pytest.raises(UserInputError, match="--list-opts takes KIND:NAME with KIND one of model, breaker"):
        evaluate_main(["--list-opts", "kernel:fnn"])


def test_breaker_options_in_either_separator():
    assert [b.spec for b in parse_breakers("blur@kernel=5,sigma=0.5,blur@kernel=5@sigma=0.5,jpeg")] == [
        "blur@kernel=5@sigma=0.5", "blur@kernel=5@sigma=0.5", "jpeg"]
    assert parse_breakers("adversarial-training@step-size=1/255")[0].options["step_size"] == 1 / 255
