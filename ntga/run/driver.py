"""The one generation driver: runs any registered method on a split and writes the poison directory.

Every method, NTGA included, goes through :func:`generate`: resolve the
per-dataset defaults, choose the protected share (``--fraction``), fingerprint
the run, apply the output-folder policy, let the method refuse settings that
fail against the data (before anything is written), open the work directory
``OUT/.work`` (resume), hand the method a :class:`~ntga.methods.base.ProtectTask`
(with the block runner for block-wise methods: ``--shard``, devices), check what
it returns (shape, dtype, labels), merge the protected rows back among the clean
ones, and write the poison directory with a full manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ntga import outdir
from ntga.data import Split, split_from_args
from ntga.errors import UserInputError
from ntga.methods.base import MethodSpec, Protected, ProtectTask
from ntga.poisondir import write_poison_dir
from ntga.run.blocks import BlockRunner
from ntga.run.fingerprint import finished_with_same_settings, run_fingerprint
from ntga.run.fraction import check_fraction, select_protected
from ntga.run.plan import parse_shard
from ntga.run.workdir import WorkDir


def generate(split: Split, spec: MethodSpec, config: Any, out: str | Path, *, seed: int = 0,
             fraction: float = 1.0, resume: bool = False, shard: tuple[int, int] = (0, 1), devices=None,
             progress: bool = True, key_out: str | Path | None = None, secret: bytes | None = None) -> Path | None:
    """Protects ``split``'s training images with ``spec`` and writes the poison directory ``out``.

    Args:
      split: the dataset split (``split.x_train`` is what gets protected).
      spec: the method (from :func:`ntga.methods.get_method`).
      config: an instance of ``spec.config_type``; None fields get per-dataset defaults.
      out: output directory (new or empty, unless ``resume``).
      seed: seeds the method's key and the ``fraction`` choice.
      fraction: share of each class to protect, in (0, 1].
      resume: continue an interrupted run with identical settings.
      shard: ``(k, n)``: this process handles blocks ``i % n == k`` of a block-wise method.
      devices: local devices a block-wise method spreads its blocks over (default: all).
      progress: show progress bars.
      key_out: the private directory of a method with a secret (``--key-out``; required for it):
        new or empty, neither inside ``out`` nor containing it. Written before the poison directory.
      secret: fixed secret bytes for such a method (tests); None draws a fresh one.

    Returns:
      ``out`` when the poison directory is complete; None when this process did its
      shard and other shards' blocks are still missing.

    Raises:
      UserInputError: bad settings (before anything is written) or a resume with other settings.
    """
    ds = split.dataset
    split.require_classes()
    check_shard(spec, shard)
    key_out = check_secret_out(spec, key_out, out)
    positions = select_protected(split.y_train, ds.num_classes, fraction, seed)
    config = spec.resolved(config, ds.image_shape, len(positions))
    fingerprint = run_fingerprint(spec.name, dataclasses.asdict(config), seed, fraction, split)
    task = dataclasses.replace(_task(split, positions, progress), secret_out=key_out, secret=secret)
    out = Path(out)
    with outdir.writing(out, shard=shard):
        if resume and finished_with_same_settings(out, fingerprint):
            print(f"{out} is already complete; nothing to do")
            return out
        work = WorkDir(out)
        work.check(fingerprint, resume=resume)  # the folder policy and settings, before any compute
        if spec.check is not None:
            spec.check(task, config)
        # A setting that only fails against the data inside protect raises UserInputError:
        # outdir.writing then removes the half-made directory of a fresh run.
        work.open(fingerprint, resume=resume)
        task = dataclasses.replace(task, workdir=work.private("method"), resume=resume,
                                   blocks=BlockRunner(work, resume=resume, shard=shard, devices=devices,
                                                      progress=progress))
        start = time.perf_counter()
        result = spec.protect(task, config, jax.random.key(seed))
        wall = time.perf_counter() - start
        if result is None:
            if finished_with_same_settings(out, fingerprint):
                print(f"{out} was completed by another process of this run")
                return out
            print(f"shard {shard[0] + 1}/{shard[1]} finished; other shards' blocks are still missing in {out}")
            return None
        _check_output(spec, result, task)
        if spec.secret_output:
            result = _write_secret(spec, result, key_out, split, out, fingerprint)
        # Shards share `out`: only one writes, and a late one finds the directory complete.
        with outdir.assembly_lock(out):
            if finished_with_same_settings(out, fingerprint):
                print(f"{out} was completed by another process of this run")
                return out
            return _write(split, spec, config, out, work, fingerprint, positions, result, wall)


def check_shard(spec: MethodSpec, shard: tuple[int, int]) -> None:
    """Only block-wise methods can split their work over processes."""
    if shard != (0, 1) and not spec.block_wise:
        from ntga.methods import METHOD_NAMES, get_method

        block_wise = [name for name in METHOD_NAMES if get_method(name).block_wise]
        raise UserInputError(f"--shard applies to block-wise methods ({', '.join(block_wise)}), "
                             f"not to --method {spec.name}")


def check_secret_out(spec: MethodSpec, key_out: str | Path | None, out: str | Path) -> Path | None:
    """``--key-out`` is required for a method with a secret, refused for the others, and never published."""
    if not spec.secret_output:
        if key_out is not None:
            raise UserInputError(f"--key-out applies to methods with a private key (radioactive), "
                                 f"not to --method {spec.name}")
        return None
    if key_out is None:
        raise UserInputError(f"--method {spec.name} needs --key-out DIR: a new private folder, outside --out, "
                             "for the secret key that later proves use of the marked data")
    from ntga.marking.key import check_key_out

    return check_key_out(key_out, out)


def _write_secret(spec: MethodSpec, result: Protected, key_out: Path, split: Split, out: Path,
                  fingerprint: dict[str, Any]) -> Protected:
    """Writes the method's secret to ``key_out`` (before the poisons) and keeps only its hash for the manifest."""
    from ntga.marking.key import write_key

    if result.secret is None:
        raise RuntimeError(f"method {spec.name} returned no secret")
    where = {"poison_dir": str(out.resolve()), "dataset": split.dataset.spec,
             "dataset_content_hash": split.dataset.content_hash, "seed": fingerprint.get("seed"),
             "fraction": fingerprint.get("fraction"), "num_training_images": int(len(split.y_train))}
    secret = dataclasses.replace(result.secret, info={**result.secret.info, **where})
    path = write_key(secret, key_out)
    print(f"PRIVATE KEY written to {path.resolve()} (key sha256 {result.secret.hash[:16]}...): it is the only "
          "proof of the mark; back it up and never publish it (the poison directory refers to it by hash only)")
    return dataclasses.replace(result, info={**result.info, "key_sha256": result.secret.hash}, secret=None)


def _task(split: Split, positions: np.ndarray, progress: bool) -> ProtectTask:
    rest = np.setdiff1d(np.arange(len(split.y_train)), positions)
    return ProtectTask(
        x=split.x_train[positions], y=split.y_train[positions].astype(np.int64),
        num_classes=split.dataset.num_classes,
        x_rest=split.x_train[rest], y_rest=split.y_train[rest].astype(np.int64),
        x_target=split.x_target, y_target=split.y_target.astype(np.int64), progress=progress,
        class_names=tuple(split.dataset.class_names), source_indices=split.train_idx[positions].astype(np.int64),
    )


def _check_output(spec: MethodSpec, out: Protected, task: ProtectTask) -> None:
    """A method's output must be uint8 images of the input's shape with valid labels."""
    if not isinstance(out, Protected):
        raise TypeError(f"method {spec.name} returned {type(out).__name__}, expected Protected")
    x, y = np.asarray(out.x), np.asarray(out.y)
    if x.dtype != np.uint8 or x.shape != task.x.shape:
        raise RuntimeError(f"method {spec.name} returned images {x.dtype}{list(x.shape)}, "
                           f"expected uint8{list(task.x.shape)}")
    if not np.array_equal(y, task.y):
        raise RuntimeError(f"method {spec.name} changed the labels; protection methods keep them")


def _write(split: Split, spec: MethodSpec, config: Any, out: Path, work: WorkDir, fingerprint: dict[str, Any],
           positions: np.ndarray, result: Protected, wall: float) -> Path:
    """The manifest and the poison directory of a finished run."""
    ds = split.dataset
    x_all = split.x_train.copy()
    y_all = split.y_train.astype(np.int64).copy()
    x_all[positions] = result.x
    y_all[positions] = result.y
    manifest = {
        **fingerprint,
        # A method with a configurable norm is bounded in the norm it was run with.
        "budget_norm": None if spec.budget_norm is None else getattr(config, "norm", spec.budget_norm),
        "dataset_class_names": list(ds.class_names),
        "num_poisoned": int(len(positions)),
        "num_training_images": int(len(y_all)),
        "target_size": int(len(split.target_idx)),
        "wall_time_s": wall,
        **{f"{spec.info_prefix}{k}": v for k, v in result.info.items()},
    }
    if spec.budget_norm is None:
        # Unbounded methods (cuda, ops) record no L-p budget, so none is checked.
        manifest.pop("eps", None)
        manifest["norm"] = "none"
    elif "norm" not in manifest:
        manifest["norm"] = spec.budget_norm
    path = write_poison_dir(out, x=x_all, y=y_all, source_indices=split.train_idx, manifest=manifest,
                            target_indices=split.target_idx if len(split.target_idx) else None,
                            x_clean=split.x_train, class_names=ds.class_names, overwrite=True,
                            protected_positions=None if len(positions) == len(y_all) else positions)
    work.remove()
    print(f"wrote {path}: {spec.name}, {len(positions)} of {len(y_all)} training images protected in {wall:.1f}s")
    if spec.report is not None:
        print(spec.report(result.info))
    print(next_steps(path))
    return path


def next_steps(path: Path) -> str:
    """What a user runs after generating ``path``."""
    return (f"  Next: python -m defenses.evaluate --poisons {path}   (train victims on it; add --breakers ...)\n"
            f"        python -m ntga.export --poisons {path} --out DIR   (publish it as an image folder)")


def generate_from_args(args: argparse.Namespace, spec: MethodSpec, config: Any) -> Path | None:
    """CLI glue: validates the run-level flags, loads the split, and calls :func:`generate`."""
    from ntga.generate import parse_fraction

    shard = parse_shard(args.shard)
    check_shard(spec, shard)
    fraction = check_fraction(parse_fraction(args.fraction, "--fraction"))
    split = split_from_args(args)
    check_secret_out(spec, args.key_out, args.out)  # before the data is loaded
    return generate(split, spec, config, args.out, seed=args.seed, fraction=fraction, resume=args.resume,
                    shard=shard, progress=not args.no_progress, key_out=args.key_out)
