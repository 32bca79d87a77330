"""Datasets for NTGA: ``--dataset`` specs, loaders, a decode cache and deterministic splits.

Example::

    from ntga.data import load_dataset, make_split
    ds = load_dataset("digits")      # or "idx:DIR", "folder:PATH", "npz:FILE", "tfds:NAME"
    split = make_split(ds, train_size=512, seed=0)
    split.x_train, split.y_train     # uint8 [512, 8, 8, 1], int64 [512]: to protect
    split.x_target, split.y_target   # the attack's held-out target set

Modules: ``dataset`` (the Dataset type), ``load`` (spec parsing, loader
registry), ``digits``/``idx``/``folder``/``npz``/``tfds_source`` (one per
source kind), ``images`` (pixel decoding), ``cache`` (decoded-array cache),
``split`` (train/target/test indices), ``writers`` (export to each format),
``cli``/``preview`` (flags and the ``python -m ntga.data`` inspection command).
"""

from ntga.data.cli import add_dataset_args, describe, int_at_least, positive_int, split_from_args
from ntga.data.dataset import Dataset
from ntga.data.load import LOADERS, SPEC_FORMS, LoadInfo, is_dataset_spec, load_dataset, load_dataset_info, parse_spec
from ntga.data.preview import write_preview
from ntga.data.split import Split, default_target_size, make_split, stratified_subset
from ntga.data.writers import write_idx, write_image_folder, write_npz

__all__ = [
    "Dataset",
    "LOADERS",
    "LoadInfo",
    "SPEC_FORMS",
    "Split",
    "add_dataset_args",
    "default_target_size",
    "describe",
    "int_at_least",
    "is_dataset_spec",
    "load_dataset",
    "load_dataset_info",
    "make_split",
    "parse_spec",
    "positive_int",
    "split_from_args",
    "stratified_subset",
    "write_idx",
    "write_image_folder",
    "write_npz",
    "write_preview",
]
