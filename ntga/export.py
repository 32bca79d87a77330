"""Export a poison directory as a folder of lossless PNGs, the form a data owner publishes.

Command line::

    python -m ntga.export --poisons runs/digits-ntga --out published/digits

writes ``train/<class>/*.png`` (the protected images) and, unless ``--no-test``,
``test/<class>/*.png`` (the source dataset's clean test split, reloaded from the
manifest's dataset spec and checked against its content hash): the layout that
``--dataset folder:PATH`` reads back with the same labels (it ignores files beside
``train/`` and ``test/``). Beside them, ``README.md`` and ``datasheet.json``
(:mod:`ntga.datasheet`) say what was done, with which budget, which files are
protected, what is not included, which software made it and what to cite.
"""

from __future__ import annotations

import argparse
import errno
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ntga import atomic, datasheet
from ntga.errors import UserInputError, run_cli
from ntga.poisondir import PoisonSet, read_poison_dir
from ntga.poisondir.checks import check_images, check_labels


def _check_class_names(class_names: Sequence[str], num_classes: int) -> list[str]:
    names = [str(c) for c in class_names]
    if len(names) < num_classes:
        raise UserInputError(f"class_names has {len(names)} names but labels go up to {num_classes - 1}")
    bad = [c for c in names if not c or c in (".", "..") or "/" in c or "\\" in c or "\0" in c]
    if bad:
        raise UserInputError(f"class names {bad} cannot be folder names; use non-empty names without '/' or '\\'")
    if len(set(names)) != len(names):
        raise UserInputError(f"class names must be unique, got {names}")
    if sorted(names) != names:
        # The folder: loader numbers classes in sorted folder order; a numeric prefix
        # keeps that order equal to the label order for names that do not sort so.
        width = len(str(len(names) - 1))
        names = [f"{i:0{width}d}-{name}" for i, name in enumerate(names)]
    return names


def _save_pngs(root: Path, images: np.ndarray, labels: np.ndarray, stems: np.ndarray, names: list[str]) -> list[str]:
    """Writes one PNG per image; returns their paths relative to ``root``'s parent, in row order."""
    from PIL import Image

    for label in np.unique(labels):
        (root / names[int(label)]).mkdir(parents=True)
    files = []
    for img, label, stem in zip(images, labels, stems):  # one file per image: I/O bound, no array work to batch
        rel = f"{names[int(label)]}/{int(stem):06d}.png"
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(root / rel)
        files.append(f"{root.name}/{rel}")
    return files


def refuse_key_material(source: str | Path | None, dest: str | Path) -> None:
    """A published folder may never hold a radioactive key: refuse a destination inside one, or a source holding one.

    Raises:
      UserInputError: naming the key directory.
    """
    from ntga.marking.key import find_key_dir, keys_inside

    inside = find_key_dir(dest)
    if inside is not None:
        raise UserInputError(f"export destination {dest} is inside the private key directory {inside}; "
                             "published files must never sit beside the key: choose a folder elsewhere")
    if source is not None:
        found = keys_inside(source) or ([find_key_dir(source)] if find_key_dir(source) else [])
        if found:
            raise UserInputError(f"{source} holds (or lies inside) the private key directory {found[0]}; "
                                 "move the key out before exporting (it must never be published)")


DATASHEET_JSON = "datasheet.json"
DATASHEET_README = "README.md"


def _partial_prefix(dest: Path) -> str:
    return f".{dest.name}.partial-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _remove_stale_partials(dest: Path) -> None:
    """Deletes hidden partial exports to ``dest`` that a killed export on this machine left behind.

    A partial folder is named ``.NAME.partial-HOST-PID-RANDOM``; it is stale when HOST is
    this machine and process PID is gone. Anything else (another host's export on a
    shared file system, a running export, a folder not named by us) is left alone.
    """
    prefix = _partial_prefix(dest)
    host = socket.gethostname()
    for path in dest.parent.glob(f"{prefix}*"):
        parts = path.name[len(prefix):].rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit() or not path.is_dir():
            continue
        if not _pid_alive(int(parts[1])):
            shutil.rmtree(path, ignore_errors=True)
            print(f"removed {path}, left behind by an interrupted export", file=sys.stderr)


def export_image_folder(
    poisons: PoisonSet,
    dest: str | Path,
    *,
    class_names: Sequence[str],
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
) -> Path:
    """Writes the protected set as a folder of lossless PNGs, the form a data owner publishes.

    Layout: ``dest/train/<class>/<source_index:06d>.png`` and, with a test set,
    ``dest/test/<class>/<position:06d>.png`` (grey images as mode 'L', colour as 'RGB'),
    which the ``folder:`` dataset spec reads back with the same labels (class names
    that do not sort in label order get a numeric prefix, ``0-zebra``, ``1-ant``, so
    that they do). Files are written into a hidden
    sibling directory and renamed into place at the end, so an interrupted export
    leaves no half-written ``dest`` (and the next export to ``dest`` deletes the
    hidden leftovers of a killed one). Folders and files get the usual permissions
    under the process's umask (typically 0755 / 0644), readable by others.

    Args:
      poisons: a loaded poison directory.
      dest: a new or empty directory.
      class_names: folder name of each label (index = label).
      x_test: optional uint8 [M, H, W, C] clean test images; y_test: their int labels [M].

    Returns:
      ``dest``.
    """
    dest = Path(dest)
    refuse_key_material(poisons.path, dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserInputError(f"export destination {dest} exists and is not an empty directory; choose a new one")
    if (x_test is None) != (y_test is None):
        raise UserInputError("give both x_test and y_test, or neither")
    max_label = int(poisons.y.max()) if poisons.y.size else -1
    if x_test is not None:
        x_test = check_images(x_test, "x_test")
        y_test = check_labels(y_test, x_test.shape[0], None, "y_test")
        max_label = max(max_label, int(y_test.max()) if y_test.size else -1)
    names = _check_class_names(class_names, max_label + 1)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"cannot create {dest.parent}: {err.strerror or err}") from None
    _remove_stale_partials(dest)
    # Named after this process so a later export can tell a killed one's leftovers from a running one.
    # mkdir honours the umask (usually 0755): a published folder must be readable by others.
    tmp = dest.parent / f"{_partial_prefix(dest)}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir(mode=0o777)
    except OSError as err:
        raise UserInputError(f"cannot write into {dest.parent}: {err.strerror or err}") from None
    try:
        train_files = _save_pngs(tmp / "train", poisons.x, poisons.y, poisons.source_indices, names)
        test_files = (None if x_test is None else
                      _save_pngs(tmp / "test", x_test, y_test, np.arange(x_test.shape[0]), names))
        sheet = datasheet.build(poisons, train_files, test_files, names)
        atomic.write_json(tmp / DATASHEET_JSON, sheet)
        atomic.write_text(tmp / DATASHEET_README, datasheet.to_markdown(sheet))
        try:
            if dest.exists():
                dest.rmdir()  # empty (checked above); rename cannot replace it portably
            os.replace(tmp, dest)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise UserInputError(f"export destination {dest} was filled by someone else during the export; "
                                 "choose a new one") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ntga.export", description=(
        "Export a poison directory as an image folder of lossless PNGs (train/<class>/, test/<class>/), "
        "readable back with --dataset folder:PATH."))
    p.add_argument("--poisons", required=True, help="poison directory written by `python -m ntga.generate`")
    p.add_argument("--out", required=True, help="new or empty destination folder")
    p.add_argument("--no-test", action="store_true", help="export only the protected training images")
    p.add_argument("--dataset", default=None,
                   help="where the source dataset is now, if it moved (default: the manifest's spec; its "
                   "content hash must match)")
    args = p.parse_args(argv)
    poisons = read_poison_dir(args.poisons)
    names = poisons.manifest.get("class_names") or poisons.manifest.get("dataset_class_names")
    x_test = y_test = None
    if not args.no_test:
        from ntga.data import load_dataset

        spec = args.dataset or poisons.manifest.get("dataset")
        if not spec:
            raise UserInputError(f"{args.poisons} names no source dataset; pass --dataset SPEC or --no-test")
        ds = load_dataset(spec)
        expected = poisons.manifest.get("dataset_content_hash")
        if expected and ds.content_hash != expected:
            raise UserInputError(f"dataset {spec!r} has content hash {ds.content_hash[:12]}..., but the poisons "
                                 f"were made from {expected[:12]}...; point --dataset at the same data")
        x_test, y_test, names = ds.x_test, ds.y_test, names or ds.class_names
    if not names:
        raise UserInputError(f"{args.poisons}/manifest.json has no class_names")
    dest = export_image_folder(poisons, args.out, class_names=names, x_test=x_test, y_test=y_test)
    print(f"exported {len(poisons.x)} protected training images"
          f"{'' if x_test is None else f' and {len(x_test)} clean test images'} to {dest}")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
