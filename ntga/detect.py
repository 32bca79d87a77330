"""`python -m ntga.detect`: was this model trained on my radioactive data? A p-value from the private key.

Example (after ``ntga.generate --method radioactive --key-out KEY`` and
``defenses.evaluate --poisons POISONS --save-models --out EVAL``)::

    python -m ntga.detect --key KEY --model EVAL/models/small-cnn/poisoned/seed0
    python -m ntga.detect --key KEY --model EVAL/models/small-cnn/poisoned/seed0 --black-box

Prints one JSON object (``test``, ``p_value``, ``log10_p``, per-class cosines for
the white-box test) and writes it to ``--out`` (default: ``detect.json`` in the
model directory). The tests: :mod:`ntga.marking.detection`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from ntga.errors import UserInputError, run_cli

DEFAULT_NUM_IMAGES = 5000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ntga.detect",
        description="Test whether a trained classifier carries a radioactive mark (Sablayrolles et al., ICML "
        "2020). White-box (default): the model's features are aligned to the marking network's by least "
        "squares on held-out images, its classifier rows mapped into the marking space and compared with the "
        "secret carriers; per-class exact p-values (incomplete beta) are combined with Fisher's method. "
        "--black-box uses only the model's outputs: its loss on the marked images versus their unmarked "
        "originals, one-sided paired t-test; it shows use of the marked images (a membership signal), not the "
        "carriers, and its null control is a model trained on neither. Prints one JSON object (p_value, log10_p, test, per-class "
        "cosines) and writes it to --out.")
    p.add_argument("--key", required=True, metavar="DIR",
                   help="the private key directory written by `ntga.generate --method radioactive --key-out DIR`")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="a saved model (model.json + params.npz), e.g. from `defenses.evaluate --save-models`: "
                   "OUT/models/<model>/<condition>/seed<k>")
    p.add_argument("--dataset", default=None, metavar="SPEC",
                   help="where the held-out images for the white-box alignment come from: the test split of "
                   "this dataset spec (default: the dataset recorded in the key)")
    p.add_argument("--num-images", type=int, default=DEFAULT_NUM_IMAGES,
                   help=f"held-out images used for the alignment (default {DEFAULT_NUM_IMAGES}, or all there are)")
    p.add_argument("--black-box", action="store_true",
                   help="the black-box test (model outputs only) instead of the white-box one")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="where to write the JSON result (default: MODEL_DIR/detect.json, or "
                   "detect-black-box.json with --black-box)")
    p.add_argument("--cache-dir", default=None, help="dataset cache folder (as for ntga.generate)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_images < 1:
        raise UserInputError(f"--num-images must be >= 1, got {args.num_images}")
    from ntga import atomic
    from ntga.marking.detection import black_box, check_compatible, white_box
    from ntga.marking.key import read_key
    from ntga.models.saved import load_model

    key = read_key(args.key)
    model = load_model(args.model)
    check_compatible(key, model)
    if args.black_box:
        result = black_box(key, model)
    else:
        from ntga.data import load_dataset

        spec = args.dataset or key.info.get("dataset")
        if not spec:
            raise UserInputError(f"the key {args.key} names no dataset; pass --dataset SPEC")
        ds = load_dataset(spec, cache_dir=args.cache_dir)
        x = ds.x_test[:args.num_images]
        if tuple(x.shape[1:]) != tuple(model.input_shape):
            raise UserInputError(f"--dataset {spec} has {'x'.join(map(str, x.shape[1:]))} images but the model "
                                 f"takes {'x'.join(map(str, model.input_shape))}")
        result = white_box(key, model, x)
        result["heldout_dataset"] = spec
    out = Path(args.out) if args.out else Path(args.model) / ("detect-black-box.json" if args.black_box
                                                              else "detect.json")
    text = json.dumps(result, allow_nan=False)
    print(text)
    atomic.write_text(out, text + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
