"""The breaker interface: options, breakers, factories and ``+`` composition.

A :class:`Breaker` is a frozen description plus up to two behaviours:

* ``prepare(x_train, y_train, key) -> (x_train, y_train)``: dataset level,
  once before training (images uint8 [0, 255] or float [0, 1], [N, H, W, C]);
  a breaker whose ``prepare`` drops rows (``filter``) also says, before any
  work, how many of N rows it leaves (:meth:`Breaker.rows_left`);
* ``hooks(num_classes) -> ntga.train.TrainHooks``: training time, inside
  the jitted step (contract in ``ntga.train``; a ``+`` composition merges
  them with ``ntga.train.compose_hooks``).

Test images are never altered by any breaker. A :class:`BreakerFactory`
holds a breaker's option specs and builds configured breakers:
``BREAKERS["jpeg"](quality=20)``.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, Callable, Mapping

import jax

from ntga.train import TrainHooks, compose_hooks
from ntga.errors import UserInputError
from ntga.options import OptionField, coerce

# What a breaker alters; the vocabulary used in `touches` and in reports.
TOUCHES_IMAGES = "training images before training"
TOUCHES_BATCHES = "training batches during training"
TOUCHES_LOSS = "training loss"
TOUCHES_PROCEDURE = "training procedure"
TOUCHES = (TOUCHES_IMAGES, TOUCHES_BATCHES, TOUCHES_LOSS, TOUCHES_PROCEDURE)

PrepareFn = Callable[[Any, Any, jax.Array], tuple[Any, Any]]
HooksFn = Callable[[int], TrainHooks]
RowsFn = Callable[[int], "int | None"]


@dataclasses.dataclass(frozen=True)
class Option:
    """One tunable option of a breaker.

    Attributes:
        name: identifier used on the command line (``jpeg@quality=20``).
        kind: int, float or str; values are parsed into this type (floats
            accept fractions such as ``8/255``).
        default: value used when the option is not given.
        help: one line: meaning and unit.
        choices: allowed values for str options (empty: any).
        low, high: inclusive bounds for numbers (None: unbounded).
        shown: how the default is displayed (e.g. "8/255"); repr by default.
    """

    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    shown: str | None = None

    def describe(self) -> str:
        """``name=default`` plus the help text and accepted range, for messages and --help."""
        shown = self.shown if self.shown is not None else str(self.default)
        accepted = ""
        if self.choices:
            accepted = f"; one of {', '.join(self.choices)}"
        elif self.low is not None or self.high is not None:
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            accepted = f"; {self.kind.__name__} in [{low}, {high}]"
        return f"{self.name}={shown} ({self.help}{accepted})"

    def field(self) -> OptionField:
        """This option as a row of :func:`ntga.options.describe_options` (``--list-opts breaker:NAME``)."""
        accepted = self.describe().partition(" (")[2].rstrip(")")
        return OptionField(self.kind, self.default if self.shown is None else _Shown(self.shown), accepted)

    def parse(self, text: str, breaker: str) -> Any:
        """Parses and validates a command-line value; UserInputError naming what is accepted."""
        bad = UserInputError(f"breaker {breaker!r}: bad value {text!r} for option {self.describe()}")
        try:
            value = coerce(text, self.kind, f"{breaker}@{self.name}")  # ints and floats accept 8/255-style fractions
        except UserInputError:
            raise bad from None
        return self.validate(value, breaker, bad)

    def validate(self, value: Any, breaker: str, error: UserInputError | None = None) -> Any:
        """Checks type, choices and bounds of an already-typed value."""
        error = error or UserInputError(f"breaker {breaker!r}: bad value {value!r} for option {self.describe()}")
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.kind) or isinstance(value, bool):
            raise error
        if self.choices and value not in self.choices:
            raise error
        if self.low is not None and value < self.low:
            raise error
        if self.high is not None and value > self.high:
            raise error
        return value


@dataclasses.dataclass(frozen=True)
class Breaker:
    """A configured breaker (or a ``+`` composition of several).

    Attributes:
        name: registry name, or names joined by ``+`` for a composition.
        description: one sentence on what it does.
        source: the paper / benchmark the method and its defaults come from.
        touches: which data it alters (values from TOUCHES); never test inputs.
        defaults: option name -> default value.
        options: option name -> value actually used (defaults that depend on
            other options, e.g. eps on the norm, resolved).
        given: the options set explicitly (what ``spec`` shows).
        members: the members of a composition, in order (a single breaker: itself).
        rows_fn: ``rows_fn(n)``: how many of ``n`` training rows ``prepare`` keeps (None: known
            only once it runs); None for breakers that keep every row.
    """

    name: str
    description: str
    source: str
    touches: tuple[str, ...]
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    given: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    prepare_fn: PrepareFn | None = dataclasses.field(default=None, repr=False)
    hooks_fn: HooksFn | None = dataclasses.field(default=None, repr=False)
    members: tuple["Breaker", ...] = dataclasses.field(default=(), repr=False)
    rows_fn: RowsFn | None = dataclasses.field(default=None, repr=False)

    @property
    def parts(self) -> tuple["Breaker", ...]:
        return self.members or (self,)

    @property
    def spec(self) -> str:
        """Command-line text that rebuilds this breaker: ``name`` plus ``@key=value`` per
        explicitly given option that differs from its default (so ``jpeg@quality=10`` is
        ``jpeg``); members joined by ``+``."""
        if self.members:
            return "+".join(member.spec for member in self.members)
        changed = [f"@{k}={_show(v)}" for k, v in self.given.items() if v != self.defaults.get(k)]
        return self.name + "".join(changed)

    @property
    def has_prepare(self) -> bool:
        return self.prepare_fn is not None

    @property
    def has_hooks(self) -> bool:
        return self.hooks_fn is not None

    def prepare(self, x_train, y_train, key: jax.Array):
        """Dataset-level transform, applied once before training (identity when absent).

        Args:
            x_train: [N, H, W, C] uint8 [0, 255] or float [0, 1].
            y_train: [N] integer labels.
            key: PRNG key (split per member in a composition).

        Returns:
            (x_train [N, H, W, C] uint8 or float32 in [0, 1], y_train [N]).
        """
        if self.prepare_fn is None:
            return x_train, y_train
        return self.prepare_fn(x_train, y_train, key)

    def rows_left(self, n: int) -> int | None:
        """How many of ``n`` training rows reach training after ``prepare`` (members left to right).

        Returns None when that is known only once ``prepare`` runs (``filter`` without ``share``).

        Raises:
            UserInputError: ``n`` rows are too few for a member itself (e.g. filter's suspect model).
        """
        left: int | None = int(n)
        for part in self.parts:
            if left is None:
                return None
            if part.rows_fn is not None:
                left = part.rows_fn(left)
        return left

    def hooks(self, num_classes: int) -> TrainHooks:
        """The training-time behaviour (an empty TrainHooks when there is none).

        Args:
            num_classes: k, for breakers that build soft labels [B, k].
        """
        if self.hooks_fn is None:
            return TrainHooks()
        return self.hooks_fn(num_classes)


class _Shown(str):
    """A default shown as written (``8/255 for linf``), not quoted."""

    def __repr__(self) -> str:
        return str(self)


def _show(value: Any) -> str:
    return str(value)  # shortest round-tripping text, also for floats


@dataclasses.dataclass(frozen=True)
class BreakerFactory:
    """Builds configured :class:`Breaker` objects from validated options.

    ``build(**options) -> (prepare_fn | None, hooks_fn | None)`` receives every
    option (defaults filled in, then ``resolve``d) and returns the behaviours.
    ``resolve(options) -> options`` fills defaults that depend on other
    options (an option whose default is None). ``rows(n, **options) -> int | None``
    (breakers that drop rows only): how many of ``n`` rows ``prepare`` keeps
    (:meth:`Breaker.rows_left`).
    """

    name: str
    description: str
    source: str
    touches: tuple[str, ...]
    options: tuple[Option, ...]
    build: Callable[..., tuple[PrepareFn | None, HooksFn | None]] = dataclasses.field(repr=False)
    resolve: Callable[[dict[str, Any]], dict[str, Any]] | None = dataclasses.field(default=None, repr=False)
    rows: Callable[..., int | None] | None = dataclasses.field(default=None, repr=False)

    @property
    def defaults(self) -> Mapping[str, Any]:
        return MappingProxyType({opt.name: opt.default for opt in self.options})

    def option(self, name: str) -> Option:
        for opt in self.options:
            if opt.name == name:
                return opt
        accepted = ", ".join(o.describe() for o in self.options) or "none (it takes no options)"
        raise UserInputError(f"breaker {self.name!r} has no option {name!r}; accepted options: {accepted}")

    def __call__(self, **overrides: Any) -> Breaker:
        given = {key: self.option(key).validate(value, self.name) for key, value in overrides.items()}
        values = {**self.defaults, **given}
        if self.resolve is not None:
            values = self.resolve(values)
        prepare_fn, hooks_fn = self.build(**values)
        return Breaker(
            name=self.name,
            description=self.description,
            source=self.source,
            touches=self.touches,
            defaults=self.defaults,
            options=MappingProxyType(values),
            given=MappingProxyType(given),
            prepare_fn=prepare_fn,
            hooks_fn=hooks_fn,
            rows_fn=None if self.rows is None else (lambda n: self.rows(n, **values)),
        )


def compose(*breakers: Breaker) -> Breaker:
    """``a+b+...``: prepares run left to right; training hooks are merged.

    Batch transforms are chained left to right; at most one member may
    override the loss and at most one may replace the batch by an
    adversarial procedure (UserInputError otherwise). A single breaker is
    returned unchanged.
    """
    members = tuple(part for b in breakers for part in b.parts)
    if not members:
        raise UserInputError("empty breaker composition")
    if len(members) == 1:
        return members[0]
    if any(m.name == "none" for m in members):
        raise UserInputError("'none' cannot be composed with other breakers with '+'; list it on its own")
    name = "+".join(m.name for m in members)
    prepares = [(m.name, m.prepare_fn) for m in members if m.prepare_fn is not None]
    hooked = [m for m in members if m.hooks_fn is not None]

    def prepare_fn(x, y, key):
        for k, (_, fn) in zip(jax.random.split(key, len(prepares)), prepares):
            x, y = fn(x, y, k)
        return x, y

    def hooks_fn(num_classes):
        return compose_hooks(*(m.hooks(num_classes) for m in hooked), names=[m.name for m in hooked])

    if len(hooked) > 1:
        hooks_fn(2)  # a clash fails now, at parse time
    touches = tuple(t for t in TOUCHES if any(t in m.touches for m in members))
    return Breaker(
        name=name,
        description=" then ".join(m.description.rstrip(".") for m in members) + ".",
        source="; ".join(dict.fromkeys(m.source for m in members)),
        touches=touches,
        defaults=MappingProxyType({f"{m.name}.{k}": v for m in members for k, v in m.defaults.items()}),
        options=MappingProxyType({f"{m.name}.{k}": v for m in members for k, v in m.options.items()}),
        given=MappingProxyType({f"{m.name}.{k}": v for m in members for k, v in m.given.items()}),
        prepare_fn=prepare_fn if prepares else None,
        hooks_fn=hooks_fn if hooked else None,
        members=members,
    )
