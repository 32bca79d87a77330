"""One options grammar for every registry: ``name@key=value,key=value``, typed values, one lookup.

Kernels (``--kernel cnn@depth=3``), methods (``--method em@noise=class-wise``),
victims (``--model resnet18@width=32``) and breakers
(``--breakers jpeg@quality=20+grayscale``) are all written the same way::

    spec     := name ["@" option ("," option)*]
    option   := key "=" value          keys accept dashes for underscores
    value    := text ["," number]*     a list value, e.g. stages=1,1,1,1

``@`` also separates options (``adversarial-training@norm=l2@eps=0.5``, the
breakers' original form). Values are typed from the annotation of the
config's field (:func:`coerce`): ``int``, ``float`` (via ``Fraction``, so
``8/255`` works wherever a float does), ``bool`` (true/false, yes/no, on/off,
1/0), ``X | None`` (``none``), ``Literal[...]`` choices, tuples and sequences
(comma-separated), ``str``. Where nothing declares a type (``Any``), the text
is read as a bool (true/false), a comma-separated tuple, an int, a float or a
string, in that order.

This module is the ground floor of the option handling: it imports nothing of
``ntga.methods``, ``ntga.models`` or ``defenses``; each of those hands it a
config dataclass or a field table.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Sequence as AbcSequence
from fractions import Fraction
from typing import Any, Iterable, Mapping, NamedTuple, TypeVar

from ntga.errors import UserInputError

T = TypeVar("T")

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
# A comma-separated piece that starts like a number continues a list value (stages=1,1,1,1).
_NUMBER_START = re.compile(r"^[-+.0-9]")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class OptionField(NamedTuple):
    """One settable option: its type annotation, default and a line of help ("" for none)."""

    annotation: Any
    default: Any = None
    help: str = ""


# ----------------------------------------------------------------------------- grammar


def _key(text: str, where: str, example: str) -> str:
    key = text.strip()
    if not _KEY.match(key):
        raise UserInputError(f"{where}: {text.strip()!r} is not a key=value option (e.g. {example})")
    return key.replace("-", "_")


def merge_assignments(spec_items: Mapping[str, str], assignments: Iterable[str], flag: str, spec_flag: str,
                      example: str, what: str = "option") -> dict[str, str]:
    """The raw options of a ``NAME@...`` spec plus repeated ``flag KEY=VALUE`` ones (e.g. --method-opt).

    Raises:
      UserInputError: a malformed assignment, or a key given both in ``spec_flag`` and in ``flag``.
    """
    merged = dict(spec_items)
    for item in assignments:
        key, text = parse_assignment(item, flag, example)
        if key in spec_items:
            raise UserInputError(f"{what} {key!r} is given both in {spec_flag} and in {flag}")
        merged[key] = text
    return merged


def parse_spec(text: str, where: str = "option", example: str = "name@key=value,key=value"
               ) -> tuple[str, dict[str, str]]:
    """Splits ``name@key=value,key=value`` into the name and the raw option texts.

    Args:
      text: the spec; ``@`` or ``,`` separates options, a piece without ``=`` continues
        the previous value (``stages=1,1,1,1``).
      where: what the text is, for messages (e.g. ``--kernel``).
      example: a well-formed spec shown in error messages.

    Returns:
      ``(name, {key: raw value})``, keys with dashes turned into underscores, in the given order.

    Raises:
      UserInputError: empty name, a piece that is not ``key=value``, or a key given twice.
    """
    name, at, rest = text.strip().partition("@")
    name = name.strip()
    if not name:
        raise UserInputError(f"{where}: no name in {text!r} (e.g. {example})")
    items: dict[str, str] = {}
    last = None
    for piece in re.split(r"[@,]", rest) if at else ():
        head, eq, value = piece.partition("=")
        if not eq and last is not None and piece.strip():
            items[last] += "," + piece.strip()
            continue
        if not eq:
            raise UserInputError(f"{where}: {piece.strip()!r} in {text!r} is not key=value (e.g. {example})")
        key = _key(head, f"{where} {text!r}", example)
        if key in items:
            raise UserInputError(f"{where}: option {key!r} given twice in {text!r}")
        items[key], last = value.strip(), key
    return name, items


def format_spec(name: str, items: Mapping[str, Any]) -> str:
    """The inverse of :func:`parse_spec`: ``name`` or ``name@key=value,key=value``."""
    if not items:
        return name
    return name + "@" + ",".join(f"{k}={v}" for k, v in items.items())


def split_specs(text: str, where: str = "option") -> list[str]:
    """Splits a comma-separated list of specs (``--model a@width=8,b``, ``--breakers x,y+z``).

    A piece belongs to the spec before it when that spec has options (``@``) and the
    piece is another ``key=value`` or a number continuing a list value; any other piece
    starts a new spec. So ``resnet18@width=8,stages=1,1,1,1,cnn`` is two specs.

    Raises:
      UserInputError: an empty list.
    """
    if not text or not text.strip():
        raise UserInputError(f"{where} is empty")
    specs: list[str] = []
    for piece in text.split(","):
        stripped = piece.strip()
        head = stripped.partition("=")[0]
        continues = bool(specs) and "@" in specs[-1].rpartition("+")[2] and "@" not in stripped and (
            ("=" in stripped and _KEY.match(head.strip()) is not None) or _NUMBER_START.match(stripped) is not None)
        if continues:
            specs[-1] += "," + stripped
        else:
            specs.append(stripped)
    return specs


def parse_assignment(item: str, flag: str, example: str = "key=value") -> tuple[str, str]:
    """``KEY=VALUE`` (one repeated ``--*-opt`` flag) -> ``(key, raw value)``; dashes in keys become underscores."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserInputError(f"{flag} must look like KEY=VALUE (e.g. {example}), got {item!r}")
    return _key(key, flag, example), value.strip()


# ----------------------------------------------------------------------------- typing


def parse_number(text: str) -> float:
    """``0.03``, ``8/255`` or ``1e-2`` -> float (ValueError / ZeroDivisionError otherwise)."""
    return float(Fraction(text.strip()))


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        number = Fraction(text.strip())  # 10.0, 1e2 and 20/2 are whole numbers too
        if number.denominator != 1:
            raise
        return int(number)


def _infer(text: str) -> Any:
    """Untyped text: bool (true/false), a tuple (comma-separated), an int, a float, else a string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "," in text:
        return tuple(_infer(part) for part in text.split(",") if part)
    for cast in (int, float, parse_number):
        try:
            return cast(text)
        except (ValueError, ZeroDivisionError):
            pass
    return text


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def coerce(text: str, annotation: Any, where: str) -> Any:
    """Converts command-line ``text`` to the type a config field's annotation names.

    Args:
      text: the raw value.
      annotation: ``int``, ``float``, ``bool``, ``str``, ``X | None``, a union of several types
        (tried in order), ``Literal[...]``, ``tuple[X, ...]`` / ``tuple[X, Y]`` / ``Sequence[X]``
        (comma-separated), or ``Any`` (inferred).
      where: the option, for messages (e.g. ``--method-opt steps``).

    Raises:
      UserInputError: naming ``where``, the type or the choices, and the text.
    """
    hint = annotation
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() == "none" and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return coerce(text, options[0], where)
        for option in options:
            try:
                return coerce(text, option, where)
            except UserInputError:
                continue
        raise UserInputError(f"{where} must be a {' or '.join(map(_type_name, options))}, got {text!r}")
    if origin is typing.Literal:
        if text not in args:
            raise UserInputError(f"{where} must be one of {', '.join(map(str, args))}, got {text!r}")
        return text
    if origin in (tuple, AbcSequence, list):
        parts = [part.strip() for part in text.split(",")]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(parts) != len(args):
                raise UserInputError(f"{where} must be {len(args)} comma-separated values, got {text!r}")
            return tuple(coerce(p, a, where) for p, a in zip(parts, args))
        element = args[0] if args else Any
        return tuple(coerce(p, element, where) for p in parts)
    if hint is Any or hint is None:
        return _infer(text.strip())
    try:
        if hint is bool:
            low = text.strip().lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise ValueError
        if hint is int:
            return _parse_int(text)
        if hint is float:
            return parse_number(text)
    except (ValueError, ZeroDivisionError):
        raise UserInputError(f"{where} must be a {_type_name(hint)}, got {text!r}") from None
    return text


# ----------------------------------------------------------------------------- configs


def option_fields(config_type: Any, exclude: Iterable[str] = ()) -> dict[str, OptionField]:
    """The field table of a dataclass (or a ``functools.partial`` of one, whose keywords are defaults).

    Args:
      config_type: a dataclass type (a config, or a Flax module class), or a partial of one.
      exclude: field names to leave out.
    """
    preset: Mapping[str, Any] = {}
    if isinstance(config_type, functools.partial):
        preset, config_type = config_type.keywords, config_type.func
    hints = typing.get_type_hints(config_type)
    table = {}
    for f in dataclasses.fields(config_type):
        if f.name in exclude:
            continue
        if f.name in preset:
            default = preset[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        table[f.name] = OptionField(hints.get(f.name, Any), default)
    return table


def check_keys(keys: Iterable[str], accepted: Iterable[str], where: str) -> None:
    """One clear error for the first key that is not accepted: ``{where} has no option 'x'; accepted: ...``."""
    accepted = tuple(accepted)
    for key in keys:
        if key not in accepted:
            raise UserInputError(f"{where} has no option {key!r}; accepted: {', '.join(accepted) or 'none'}")


def typed_items(fields: Mapping[str, OptionField], items: Mapping[str, str], where: str,
                strict: bool = True) -> dict[str, Any]:
    """Types raw ``{key: text}`` options from a field table.

    Args:
      fields: name -> :class:`OptionField`.
      items: raw options (from :func:`parse_spec` or :func:`parse_assignment`).
      where: the thing they configure, for messages (e.g. ``--method em``).
      strict: unknown keys are an error; otherwise they are typed as ``Any`` (for settings that
        the consumer validates itself, e.g. extra Flax module attributes).

    Raises:
      UserInputError: an unknown key (the message lists the accepted ones) or a bad value.
    """
    if strict:
        check_keys(items, fields, where)
    values = {}
    for key, text in items.items():
        values[key] = coerce(text, fields[key].annotation if key in fields else Any, f"{where}: {key}")
    return values


def config_from_items(config_type: type[T], items: Mapping[str, str], where: str = "options",
                      **given: Any) -> T:
    """A frozen config dataclass from raw ``{key: text}`` options and already-typed values.

    Args:
      config_type: the dataclass.
      items: raw options, typed from the field annotations.
      where: the thing configured, for messages.
      **given: typed values (e.g. from dedicated flags); the raw items win over them.

    Raises:
      UserInputError: unknown key, bad value, or a value the dataclass refuses.
    """
    values = {**given, **typed_items(option_fields(config_type), items, where)}
    try:
        return config_type(**values)
    except (TypeError, ValueError) as err:  # UserInputError from __post_init__ included: say what it configures
        raise UserInputError(f"bad settings for {where}: {err}") from None


# ----------------------------------------------------------------------------- lookup and help


def invalid_choice(what: str, value: Any, accepted: Iterable[Any]) -> UserInputError:
    """The error for a setting outside its fixed set of values: ``what='x' is invalid; accepted: a, b``."""
    return UserInputError(f"{what}={value!r} is invalid; accepted: {', '.join(map(str, accepted))}")


def check_choice(what: str, value: T, accepted: Iterable[Any]) -> T:
    """``value`` if it is one of ``accepted``, else one clear error: ``what='x' is invalid; accepted: a, b``.

    For a setting with a fixed set of values (a norm, a dtype, an optimizer); the names of a
    registry are looked up with :func:`lookup` instead.
    """
    accepted = tuple(accepted)
    try:
        known = value in accepted
    except TypeError:  # an unhashable or incomparable value is simply not one of them
        known = False
    if not known:
        raise invalid_choice(what, value, accepted)
    return value


def lookup(registry: Mapping[str, T], name: Any, kind: str) -> T:
    """``registry[name]``, or one clear error: ``unknown {kind} 'x'; accepted: a, b, c`` (registry order)."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise UserInputError(f"unknown {kind} {name!r}; accepted: {', '.join(registry)}") from None


def split_kind(text: str, kinds: Sequence[str], flag: str = "--list-opts") -> tuple[str, str]:
    """``KIND:NAME`` -> ``(kind, name)`` for a kind of ``kinds``."""
    kind, colon, name = text.partition(":")
    if not colon or kind not in kinds or not name:
        raise UserInputError(f"{flag} takes KIND:NAME with KIND one of {', '.join(kinds)} "
                             f"(e.g. {kinds[0]}:NAME), got {text!r}")
    return kind, name


def _shown(value: Any) -> str:
    # Functions (e.g. a Flax module's activation) show their name, not their address.
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    return repr(value)


# Inline reST/Sphinx markup of docstrings: ``literal``, :role:`target` (``~`` shortens), `x`.
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``|`([^`]+)`")
_SECTION = re.compile(r"^(Attributes|Args|Arguments|Parameters):\s*$")
_ENTRY = re.compile(r"^(\*{0,2}\w+)(?: \([^)]*\))?:\s*(.*)$")
_WIDTH = 100


def plain_text(text: str) -> str:
    """Docstring text for a terminal: reST/Sphinx inline markup removed (``x``, :func:`x` -> x)."""
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else m.group(1), text)
    return _LITERAL.sub(lambda m: m.group(1) or m.group(2), text)


def docstring_fields(doc: str | None) -> tuple[str, dict[str, str]]:
    """A Google-style docstring split into its prose and one line of help per field.

    Returns:
      ``(prose, {field: help})``: the text outside the ``Attributes:``/``Args:`` section,
      and each entry of that section with its continuation lines joined; both in plain
      text (:func:`plain_text`).
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    prose, helps = [], {}
    current, in_section, section_indent = None, False, 0
    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if _SECTION.match(stripped) and not in_section:
            in_section, section_indent, current = True, indent, None
            continue
        if in_section and stripped and indent <= section_indent:
            in_section = False
        if not in_section:
            prose.append(line)
            continue
        entry = _ENTRY.match(stripped)
        if entry and (current is None or indent <= entry_indent):
            current, entry_indent = entry.group(1), indent
            helps[current] = entry.group(2)
        elif current is not None and stripped:
            helps[current] = f"{helps[current]} {stripped}".strip()
    prose_text = re.sub(r"\n{3,}", "\n\n", "\n".join(prose)).strip()
    return plain_text(prose_text), {k: plain_text(v) for k, v in helps.items()}


def _wrap(line: str, indent: int) -> list[str]:
    # Long lines wrap at spaces only: flags and option names stay whole.
    return textwrap.wrap(line, _WIDTH, subsequent_indent=" " * indent, break_on_hyphens=False,
                         break_long_words=False) if len(line) > _WIDTH else [line]


def describe_options(source: Any, title: str, doc: str | None = None, note: str = "") -> str:
    """``--list-opts`` text: a title, an optional note, ``  name = default  (help)`` per option, prose.

    Args:
      source: a config dataclass (its docstring is the default ``doc``) or a field table.
      title: the first line (e.g. ``--kernel cnn: ...``).
      doc: text after the options (None: the dataclass's docstring). Its ``Attributes:``
        section gives the help of options that carry none; reST markup is removed.
      note: a line between the title and the options (e.g. how to set them).
    """
    fields = source if isinstance(source, Mapping) else option_fields(source)
    if doc is None and not isinstance(source, Mapping):
        doc = source.__doc__ or ""
    prose, helps = docstring_fields(doc)
    lines = [title] + (_wrap(note, indent=2) if note else [])
    for name, f in fields.items():
        help_text = (f.help or helps.get(name, "")).rstrip(".")
        line = f"  {name} = {_shown(f.default)}" + (f"  ({help_text})" if help_text else "")
        lines.extend(_wrap(line, indent=6))
    if not fields:
        lines.append("  (no options)")
    return "\n".join(lines) + ("\n\n" + prose if prose else "")


__all__ = ["OptionField", "check_choice", "check_keys", "invalid_choice", "merge_assignments", "coerce", "config_from_items", "describe_options",
           "docstring_fields", "format_spec", "lookup", "option_fields", "plain_text", "parse_assignment", "parse_number", "parse_spec", "split_kind", "split_specs",
           "typed_items"]
