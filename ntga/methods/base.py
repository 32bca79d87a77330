"""What every protection method receives and returns, and how its options are parsed.

A method is a pure function ``protect(task, config, key) -> Protected``:

* ``task`` (:class:`ProtectTask`) holds the uint8 images to protect with their
  labels, plus read-only context some methods use: the training images that
  stay clean (``--fraction`` below 1), the attack's held-out target set, a
  private work directory for progress files (resumable long runs), and the
  block runner that block-wise methods (NTGA, BEO) hand their per-block
  function to (resume, ``--shard``, several devices: :mod:`ntga.run.blocks`).
* ``config`` is the method's frozen dataclass, already resolved for the data
  (per-dataset defaults filled in by ``spec.resolve``).
* ``key`` is a ``jax.random`` key: the same key, config and data give the same
  output bit for bit on the same machine.

It returns uint8 images of the same shape (and the labels, unchanged for every
method so far) plus a small JSON-able ``info`` dict for the manifest; a
block-wise method returns None when this process of a sharded run has done its
blocks but others are still missing. :func:`ntga.run.driver.generate` is the one
driver that runs every method.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ntga.errors import UserInputError
from ntga.options import config_from_items, parse_assignment
from ntga.run.blocks import BlockRunner


@dataclass(frozen=True)
class ProtectTask:
    """The data a method protects, and its context.

    Attributes:
      x: uint8 [N, H, W, C] images to protect.
      y: int64 [N] their labels in [0, num_classes).
      num_classes: K.
      x_rest: uint8 [M, H, W, C] training images that stay clean (empty unless --fraction < 1).
      y_rest: int64 [M] their labels.
      x_target: uint8 [T, H, W, C] the held-out target set (may be empty).
      y_target: int64 [T] its labels.
      workdir: a private directory for progress files (inside the output's ``.work``), or None.
      resume: whether progress files in ``workdir`` from an interrupted identical run may be used.
      progress: whether to show a progress bar.
      blocks: the block runner of block-wise methods; by default one that keeps the blocks in
        memory (no resume, one process), as for a direct call from Python.
      class_names: the dataset's class names (K), or None.
      source_indices: int64 [N] dataset rows of ``x`` (for a method's private records), or None.
      secret_out: where the private output of a method with ``secret_output`` goes (``--key-out``);
        the driver writes it there, never into the output directory.
      secret: fixed secret bytes for such a method (tests, reproductions); None draws a fresh one.
    """

    x: np.ndarray
    y: np.ndarray
    num_classes: int
    x_rest: np.ndarray | None = None
    y_rest: np.ndarray | None = None
    x_target: np.ndarray | None = None
    y_target: np.ndarray | None = None
    workdir: Path | None = None
    resume: bool = False
    progress: bool = False
    blocks: BlockRunner | None = None
    class_names: tuple[str, ...] | None = None
    source_indices: np.ndarray | None = None
    secret_out: Path | None = None
    secret: bytes | None = None

    def __post_init__(self):
        if self.blocks is None:
            object.__setattr__(self, "blocks", BlockRunner(progress=self.progress))
        empty = np.zeros((0, *self.x.shape[1:]), np.uint8)
        for name in ("x_rest", "x_target"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, empty)
        for name in ("y_rest", "y_target"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, np.zeros((0,), np.int64))


@dataclass(frozen=True)
class Protected:
    """A method's output: uint8 [N, H, W, C] images, int64 [N] labels, manifest extras.

    ``secret`` is the private output of a method with ``secret_output`` (the radioactive key,
    :class:`ntga.marking.key.MarkKey`): the driver writes it to ``--key-out`` and records only
    its hash in the manifest.
    """

    x: np.ndarray
    y: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    secret: Any = None


@dataclass(frozen=True)
class MethodSpec:
    """A registered protection method.

    Attributes:
      name: the command-line name (DESIGN.md contract 3).
      summary: one line for ``--help``, with the paper.
      config_type: frozen dataclass of the method's settings (every field has a default).
      protect: ``protect(task, config, key) -> Protected``.
      resolve: ``resolve(config, image_shape, num_images) -> config`` fills per-dataset
        defaults (fields left None) from the images' ``(H, W, C)`` and, where a default
        depends on it, the number of images to protect (None when unknown); identity
        when omitted.
      budget_norm: "linf" or "l2" when the output obeys ``config.eps`` in that norm
        (checked before anything is written), None for unbounded methods (cuda, ops).
      check: ``check(task, config)`` raises :class:`UserInputError` for settings that only
        fail against the data; the driver calls it before anything is written.
      block_wise: the method protects blocks through ``task.blocks`` and so supports
        ``--shard`` and per-block resume.
      info_prefix: prefix of the ``info`` keys in the manifest (NTGA's statistics keep
        their original, unprefixed names, which readers of older manifests use).
      report: ``report(info) -> str``: lines printed after the output is written (e.g. the
        surrogate's own before/after figures); None for none.
      uses_targets: the method attacks a held-out target set (``task.x_target``); with
        ``--protect-targets`` the driver protects that set in a second pass (see
        :mod:`ntga.run.driver`).
      secret_output: the method returns a private secret (``Protected.secret``) that goes to
        ``--key-out DIR`` (required for it, refused for the others).
    """

    name: str
    summary: str
    config_type: type
    protect: Callable[[ProtectTask, Any, Any], Protected | None]
    resolve: Callable[[Any, tuple[int, ...], int | None], Any] | None = None
    budget_norm: str | None = "linf"
    check: Callable[[ProtectTask, Any], None] | None = None
    block_wise: bool = False
    info_prefix: str = "info_"
    report: Callable[[dict[str, Any]], str] | None = None
    uses_targets: bool = False
    secret_output: bool = False

    def default_config(self) -> Any:
        return self.config_type()

    def resolved(self, config: Any, image_shape: tuple[int, ...], num_images: int | None = None) -> Any:
        """``config`` with per-dataset defaults filled for ``num_images`` images of shape ``(H, W, C)``."""
        return config if self.resolve is None else self.resolve(config, tuple(image_shape), num_images)


def grey_or_colour_eps(eps: float | None, num_channels: int, grey: float = 0.3, colour: float = 8 / 255) -> float:
    """The per-dataset budget default: MNIST's 0.3 for greyscale, CIFAR-10's 8/255 for colour."""
    if eps is not None:
        return float(eps)
    return grey if num_channels == 1 else colour


# ----------------------------------------------------------------------------- option parsing


def config_from_options(spec: MethodSpec, items: Sequence[str] | Mapping[str, str], **shared: Any) -> Any:
    """Builds ``spec``'s config from raw options and shared CLI flags (grammar: :mod:`ntga.options`).

    Args:
      spec: the method.
      items: repeated ``--method-opt`` values, e.g. ``["noise=class-wise", "steps=20"]``, or the
        ``{key: text}`` options of ``--method NAME@key=value,...`` (dashes in keys are accepted
        for underscores). Values are typed from the config's annotations (``8/255`` for floats).
      **shared: values of the shared flags (``eps``, ``norm``, ``steps``, ``step_size``);
        None means "not given". A given flag the method has no field for is an error.

    Raises:
      UserInputError: unknown key (the message lists the accepted ones), bad value,
        or a shared flag that does not apply to this method.
    """
    fields = [f.name for f in dataclasses.fields(spec.config_type)]
    given = {}
    for flag, value in shared.items():
        if value is None:
            continue
        if flag not in fields:
            raise UserInputError(f"--{flag.replace('_', '-')} does not apply to --method {spec.name}; "
                                 f"its settings are: {', '.join(fields)}")
        given[flag] = value
    if not isinstance(items, Mapping):
        raw: dict[str, str] = {}
        for item in items:
            key, text = parse_assignment(item, "--method-opt", "steps=20")
            raw[key] = text  # a repeated key: the last one wins, as on any command line
        items = raw
    return config_from_items(spec.config_type, items, f"--method {spec.name}", **given)
