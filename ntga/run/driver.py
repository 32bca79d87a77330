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
import hashlib
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ntga import outdir
from ntga.data import Split, split_from_args
from ntga.data.split import stratified_subset
from ntga.errors import UserInputError
from ntga.methods.base import MethodSpec, Protected, ProtectTask
from ntga.poisondir import write_poison_dir
from ntga.run.blocks import BlockRunner
from ntga.run.fingerprint import array_sha256, finished_with_same_settings, run_fingerprint
from ntga.run.fraction import check_fraction, select_protected
from ntga.run.plan import parse_shard
from ntga.run.workdir import WorkDir


# The second pass of --protect-targets: its work files, its key, its manifest entry.
TARGET_PASS = "target_pass"
_TARGET_PASS_KEY = 0x7A52


@dataclasses.dataclass(frozen=True)
class _Pass:
    """One protection pass: the output rows it protects and the task the method sees."""

    name: str  # "" for the main pass, TARGET_PASS for the target set's
    rows: np.ndarray  # int64 positions in the output's rows
    task: ProtectTask
    key: jax.Array
    targets: np.ndarray | None = None  # output rows whose clean images serve as its targets


def generate(split: Split, spec: MethodSpec, config: Any, out: str | Path, *, seed: int = 0,
             fraction: float = 1.0, resume: bool = False, shard: tuple[int, int] = (0, 1), devices=None,
             progress: bool = True, protect_targets: bool = False, key_out: str | Path | None = None,
             secret: bytes | None = None) -> Path | None:
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
      protect_targets: also protect the held-out target set, so the output holds every
        training image of the split (rows: ``split.train_idx`` then ``split.target_idx``).
        A method that attacks the target set (``spec.uses_targets``, NTGA) protects it in
        a second pass whose targets are the clean originals of a class-stratified subset
        of the first pass's images, as many as the target set (all of them if fewer);
        the first pass is the standard run, bit for bit. Any other method protects the
        target set together with the rest in one pass.
      key_out: the private directory of a method with a secret (``--key-out``; required for it):
        new or empty, neither inside ``out`` nor containing it. Written before the poison directory,
        so an interrupted run may leave the key without the poisons: ``resume`` then checks that the
        key belongs to this run (its fingerprint), marks again with the key's secret, checks that
        the result is the key's (same key sha256) and writes only the poison directory. Which rows
        carry the secret mark is recorded in the key only: such a run writes no
        ``protected_positions.npy``.
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
    refuse_out_in_key(out)
    key_out = check_secret_out(spec, key_out, out, resume)
    if protect_targets and not len(split.target_idx):
        raise UserInputError("--protect-targets: this split holds no target set out (--target-size 0), "
                             "so every training image is protected already; leave the flag out")
    rows_x, rows_y, rows_idx = _rows(split, protect_targets)
    positions = select_protected(split.y_train, ds.num_classes, fraction, seed)
    if protect_targets:
        held_out = select_protected(split.y_target, ds.num_classes, fraction, seed)
        positions = np.concatenate([positions, len(split.train_idx) + held_out])
    passes = _passes(split, spec, (rows_x, rows_y, rows_idx), positions, protect_targets, seed, progress)
    # Defaults that depend on the number of images (NTGA's block size) are resolved per
    # pass; the first pass's settings are the run's, so that pass is the standard run.
    configs = [spec.resolved(config, ds.image_shape, len(p.rows)) for p in passes]
    config = configs[0]
    fingerprint = run_fingerprint(spec.name, dataclasses.asdict(config), seed, fraction, split, protect_targets)
    out = Path(out)
    with outdir.writing(out, shard=shard):
        if resume and finished_with_same_settings(out, fingerprint):
            print(f"{out} is already complete; nothing to do")
            return out
        # A key left by an interrupted run of these settings: mark again with its secret.
        existing = _existing_key(key_out, fingerprint) if key_out is not None and resume else None
        if existing is not None:
            secret = existing.secret
        passes = [dataclasses.replace(p, task=dataclasses.replace(p.task, secret_out=key_out, secret=secret))
                  for p in passes]
        work = WorkDir(out)
        work.check(fingerprint, resume=resume)  # the folder policy and settings, before any compute
        if spec.check is not None:
            for p, c in zip(passes, configs):
                spec.check(p.task, c)
        # A setting that only fails against the data inside protect raises UserInputError:
        # outdir.writing then removes the half-made directory of a fresh run.
        work.open(fingerprint, resume=resume)
        start = time.perf_counter()
        results = _run_passes(passes, spec, configs, work, resume, shard, devices, progress)
        wall = time.perf_counter() - start
        if any(r is None for r in results):
            if finished_with_same_settings(out, fingerprint):
                print(f"{out} was completed by another process of this run")
                return out
            print(f"shard {shard[0] + 1}/{shard[1]} finished; other shards' blocks are still missing in {out}")
            return None
        for p, result in zip(passes, results):
            _check_output(spec, result, p.task)
        if spec.secret_output:  # methods with a secret protect in one pass
            results[0] = _write_secret(spec, results[0], key_out, split, out, fingerprint, len(rows_y),
                                       passes[0].rows, existing)
        # Shards share `out`: only one writes, and a late one finds the directory complete.
        with outdir.assembly_lock(out):
            if finished_with_same_settings(out, fingerprint):
                print(f"{out} was completed by another process of this run")
                return out
            return _write(split, spec, configs, out, work, fingerprint, (rows_x, rows_y, rows_idx),
                          passes, results, wall, protect_targets)


def refuse_out_in_key(out: str | Path) -> None:
    """``--out`` is published: it may not lie inside a private key directory (of any run)."""
    from ntga.marking.key import find_key_dir

    inside = find_key_dir(out)
    if inside is not None:
        raise UserInputError(f"--out {out} is inside the private key directory {inside}; the poisons are meant "
                             "to be published and the key never: choose an --out outside it")


def check_secret_out(spec: MethodSpec, key_out: str | Path | None, out: str | Path,
                     resume: bool = False) -> Path | None:
    """``--key-out`` is required for a method with a secret, refused for the others, and never published.

    With ``resume`` the folder may already hold a key (the driver checks it belongs to the run).
    """
    if not spec.secret_output:
        if key_out is not None:
            raise UserInputError(f"--key-out applies to methods with a private key (radioactive), "
                                 f"not to --method {spec.name}")
        return None
    if key_out is None:
        raise UserInputError(f"--method {spec.name} needs --key-out DIR: a new private folder, outside --out, "
                             "for the secret key that later proves use of the marked data")
    from ntga.marking.key import check_key_out

    return check_key_out(key_out, out, resume=resume)


def fingerprint_sha256(fingerprint: dict[str, Any]) -> str:
    """sha256 of a run's fingerprint (recorded in its key, so a resume finds its own key)."""
    import json

    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


def _existing_key(key_out: Path, fingerprint: dict[str, Any]):
    """The key an interrupted run of ``fingerprint`` left in ``key_out`` (verified), or None when there is none."""
    from ntga.marking.key import KEY_JSON, read_key

    if not (Path(key_out) / KEY_JSON).is_file():
        return None
    key = read_key(key_out)
    if key.info.get("run_fingerprint_sha256") != fingerprint_sha256(fingerprint):
        raise UserInputError(f"--resume: --key-out {key_out} holds the key of another run (other settings or "
                             "data), and a key is never overwritten; give this run a new --key-out (and --out)")
    print(f"--resume: reusing the private key in {key_out} (key sha256 {key.hash[:16]}...), written before the "
          "interruption; the poisons are made again with its secret")
    return key


def _write_secret(spec: MethodSpec, result: Protected, key_out: Path, split: Split, out: Path,
                  fingerprint: dict[str, Any], num_training_images: int, positions: np.ndarray,
                  existing=None) -> Protected:
    """Writes the method's secret to ``key_out`` (before the poisons) and keeps only its hash for the manifest.

    ``existing``: the key a resumed run found in ``key_out``; the new result must reproduce it.
    """
    from ntga.marking.key import write_key

    if result.secret is None:
        raise RuntimeError(f"method {spec.name} returned no secret")
    if existing is not None:
        same = (existing.hash == result.secret.hash and existing.positions is not None
                and np.array_equal(existing.positions, positions)
                and np.array_equal(existing.x_marked, result.secret.x_marked))
        if not same:
            raise UserInputError(f"--resume: marking again with the secret of {key_out} did not reproduce the "
                                 "marked images that key describes (another machine or library version?); the "
                                 f"key is kept as it is. Start over with a new --key-out and a new --out")
        return dataclasses.replace(result, info={**result.info, "key_sha256": existing.hash}, secret=None)
    where = {"poison_dir": str(out.resolve()), "dataset": split.dataset.spec,
             "dataset_content_hash": split.dataset.content_hash, "seed": fingerprint.get("seed"),
             "fraction": fingerprint.get("fraction"), "num_training_images": int(num_training_images),
             "run_fingerprint_sha256": fingerprint_sha256(fingerprint)}
    secret = dataclasses.replace(result.secret, info={**result.secret.info, **where},
                                 positions=np.asarray(positions, np.int64))
    path = write_key(secret, key_out)
    print(f"PRIVATE KEY written to {path.resolve()} (key sha256 {result.secret.hash[:16]}...): it is the only "
          "proof of the mark; back it up and never publish it (the poison directory refers to it by hash only)")
    return dataclasses.replace(result, info={**result.info, "key_sha256": result.secret.hash}, secret=None)


def _rows(split: Split, protect_targets: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The output's rows (images, int64 labels, dataset indices): the training split, then the target set."""
    x, y, idx = split.x_train, split.y_train.astype(np.int64), split.train_idx
    if protect_targets:
        x = np.concatenate([x, split.x_target])
        y = np.concatenate([y, split.y_target.astype(np.int64)])
        idx = np.concatenate([idx, split.target_idx])
    return x, y, idx


def _passes(split: Split, spec: MethodSpec, rows: tuple[np.ndarray, np.ndarray, np.ndarray],
            positions: np.ndarray, protect_targets: bool, seed: int, progress: bool) -> list[_Pass]:
    """The protection passes of a run (one, or two for --protect-targets with a target-set method)."""
    x, y, idx = rows
    k = split.dataset.num_classes
    names = tuple(split.dataset.class_names)
    rest = np.setdiff1d(np.arange(len(y)), positions)
    key = jax.random.key(seed)

    held_out = (split.x_target, split.y_target.astype(np.int64))

    def task(rows: np.ndarray, x_target: np.ndarray | None, y_target: np.ndarray | None) -> ProtectTask:
        return ProtectTask(x=x[rows], y=y[rows], num_classes=k, x_rest=x[rest], y_rest=y[rest],
                           x_target=x_target, y_target=y_target, progress=progress, class_names=names,
                           source_indices=idx[rows].astype(np.int64))

    if not (protect_targets and spec.uses_targets):
        # One pass; with --protect-targets nothing is held out, so the method sees no target set.
        return [_Pass("", positions, task(positions, *((None, None) if protect_targets else held_out)), key)]
    n_train = len(split.train_idx)
    first, second = positions[positions < n_train], positions[positions >= n_train]
    # The second pass's targets: clean originals of first-pass images (disjoint from the
    # target-set rows it protects), class-stratified, in the split's order.
    targets = stratified_subset(first, y[first], min(len(split.target_idx), len(first)), k)
    # The first pass is the standard run: the training images against the held-out set.
    return [_Pass("", first, task(first, *held_out), key),
            _Pass(TARGET_PASS, second, task(second, x[targets], y[targets]),
                  jax.random.fold_in(key, _TARGET_PASS_KEY), targets)]


def _run_passes(passes: list[_Pass], spec: MethodSpec, configs: list[Any], work: WorkDir, resume: bool,
                shard: tuple[int, int], devices, progress: bool) -> list[Protected | None]:
    """Each pass's output (None: other shards still owe blocks of it)."""
    results: list[Protected | None] = [None] * len(passes)
    # A shard may finish its part of the first pass before the other shards; the second
    # round (after the other passes) collects their blocks without recomputing anything.
    for _ in range(2 if len(passes) > 1 else 1):
        for i, p in enumerate(passes):
            if results[i] is not None:
                continue
            if len(passes) > 1:
                print(f"pass {i + 1} of {len(passes)}: " + (
                    f"{len(p.rows)} training images against the held-out target set" if not p.name else
                    f"{len(p.rows)} target-set images against {len(p.targets)} clean training images"))
            task = dataclasses.replace(
                p.task, workdir=work.private(f"method-{p.name}" if p.name else "method"), resume=resume,
                blocks=BlockRunner(work.for_pass(p.name) if p.name else work, resume=resume, shard=shard,
                                   devices=devices, progress=progress))
            results[i] = spec.protect(task, configs[i], p.key)
        if all(r is not None for r in results):
            break
    return results


def check_shard(spec: MethodSpec, shard: tuple[int, int]) -> None:
    """Only block-wise methods can split their work over processes."""
    if shard != (0, 1) and not spec.block_wise:
        from ntga.methods import METHOD_NAMES, get_method

        block_wise = [name for name in METHOD_NAMES if get_method(name).block_wise]
        raise UserInputError(f"--shard applies to block-wise methods ({', '.join(block_wise)}), "
                             f"not to --method {spec.name}")


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


def _write(split: Split, spec: MethodSpec, configs: list[Any], out: Path, work: WorkDir, fingerprint: dict[str, Any],
           rows: tuple[np.ndarray, np.ndarray, np.ndarray], passes: list[_Pass], results: list[Protected],
           wall: float, protect_targets: bool) -> Path:
    """The manifest and the poison directory of a finished run."""
    ds, config = split.dataset, configs[0]
    rows_x, rows_y, rows_idx = rows
    x_all, y_all = rows_x.copy(), rows_y.copy()
    for p, result in zip(passes, results):
        x_all[p.rows] = result.x
        y_all[p.rows] = result.y
    positions = np.sort(np.concatenate([p.rows for p in passes]))
    manifest = {
        **fingerprint,
        # A method with a configurable norm is bounded in the norm it was run with.
        "budget_norm": None if spec.budget_norm is None else getattr(config, "norm", spec.budget_norm),
        "dataset_class_names": list(ds.class_names),
        "num_poisoned": int(len(positions)),
        "num_training_images": int(len(y_all)),
        # Training images of the split held out of the output (none with --protect-targets).
        "target_size": 0 if protect_targets else int(len(split.target_idx)),
        "wall_time_s": wall,
        **{f"{spec.info_prefix}{k}": v for k, v in results[0].info.items()},
    }
    for p, c, result in zip(passes[1:], configs[1:], results[1:]):
        manifest[p.name] = {
            "protected_rows": int(len(p.rows)),
            # Settings resolved differently for this pass (e.g. a smaller block size).
            "settings": {k: v for k, v in dataclasses.asdict(c).items() if v != getattr(config, k)},
            "targets": f"clean originals of {len(p.targets)} first-pass rows (class-stratified)",
            "target_rows_sha256": array_sha256(p.targets),
            **result.info,
        }
    if spec.budget_norm is None:
        # Unbounded methods (cuda, ops) record no L-p budget, so none is checked.
        manifest.pop("eps", None)
        manifest["norm"] = "none"
    elif "norm" not in manifest:
        manifest["norm"] = spec.budget_norm
    held_out = split.target_idx if len(split.target_idx) and not protect_targets else None
    # A secret mark's rows stay secret (the key has them): no positions, and no preview, whose
    # clean / protected / difference rows would show which of its images carry the mark.
    secret_rows = spec.secret_output
    if secret_rows:
        manifest["protected_rows"] = "secret (recorded in the private key only)"
    path = write_poison_dir(out, x=x_all, y=y_all, source_indices=rows_idx, manifest=manifest,
                            target_indices=held_out, x_clean=rows_x, class_names=ds.class_names, overwrite=True,
                            protected_positions=None if secret_rows or len(positions) == len(y_all) else positions,
                            preview=not secret_rows)
    work.remove()
    print(f"wrote {path}: {spec.name}, {len(positions)} of {len(y_all)} training images protected in {wall:.1f}s"
          + (" (the target set included)" if protect_targets else ""))
    if spec.report is not None:
        print(spec.report(results[0].info))
        for result in results[1:]:
            print("target-set pass: " + spec.report(result.info))
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
    refuse_out_in_key(args.out)  # before the data is loaded
    check_secret_out(spec, args.key_out, args.out, args.resume)
    secret = _secret_of(spec, args.same_secret_as)
    fraction = check_fraction(parse_fraction(args.fraction, "--fraction"))
    split = split_from_args(args)
    return generate(split, spec, config, args.out, seed=args.seed, fraction=fraction, resume=args.resume,
                    shard=shard, progress=not args.no_progress, protect_targets=args.protect_targets,
                    key_out=args.key_out, secret=secret)


def _secret_of(spec: MethodSpec, key_dir: str | None) -> bytes | None:
    """``--same-secret-as KEY_DIR``: the secret of an existing (verified) key, for a method with a secret."""
    if key_dir is None:
        return None
    if not spec.secret_output:
        raise UserInputError(f"--same-secret-as applies to methods with a private key (radioactive), "
                             f"not to --method {spec.name}")
    from ntga.marking.key import read_key

    return read_key(key_dir).secret
