"""The datasheet of an exported protected dataset: README.md for people, datasheet.json for programs.

A data owner publishes the folder ``ntga.export`` writes; whoever downloads it
should learn from the folder itself what was done to it: the method and its
settings, the perturbation budget, which files carry protection and which do
not, which part of the source data is missing (NTGA's held-out target set), the
software that made it, and what to cite. Everything comes from the poison
directory's manifest; nothing here is estimated. A secret mark (``radioactive``)
is the exception to "which files": which images carry it is the owner's secret
(kept in the private key), so the datasheet states how many do and that which
ones is secret, and lists none.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np

from ntga.errors import UserInputError
from ntga.poisondir import PoisonSet

FORMAT = "ntga.export.datasheet/1"
# Settings worth stating, in this order, when the manifest has them.
SETTING_KEYS = ("kernel", "kernel_overrides", "t", "steps", "step_size", "block_size", "dtype", "noise", "seed",
                "fraction", "surrogate")
CITATIONS = {
    "ntga": "Chia-Hung Yuan and Shan-Hung Wu. Neural Tangent Generalization Attacks. ICML 2021.",
}
TOOLKIT = "ntga-jax: unlearnable datasets with Neural Tangent Generalization Attacks, and the breakers that undo them."


def _method_reference(method: str) -> str:
    if method in CITATIONS:
        return CITATIONS[method]
    from ntga.methods import get_method

    try:
        return get_method(method).summary
    except UserInputError:  # a manifest from another version may name a method this one lacks
        return f"method {method!r}"


def _budget(manifest: dict[str, Any]) -> dict[str, Any]:
    eps, norm = manifest.get("eps"), manifest.get("norm")
    if not isinstance(eps, (int, float)) or norm in (None, "none"):
        return {"norm": norm or "none", "eps": None,
                "statement": "no L-p budget (the method changes images by a transformation, not bounded noise)"}
    per = "per pixel" if norm == "linf" else "per image, over all pixels"
    return {"norm": norm, "eps": float(eps), "eps_in_levels": round(float(eps) * 255, 3),
            "statement": f"{norm} <= {float(eps):.6g} in [0, 1] pixel units ({float(eps) * 255:.4g}/255) {per}, "
                         "checked after rounding to 8-bit"}


def build(poisons: PoisonSet, train_files: Sequence[str], test_files: Sequence[str] | None,
          class_names: Sequence[str]) -> dict[str, Any]:
    """The datasheet as a JSON-ready dict.

    Args:
      poisons: the exported poison directory.
      train_files: relative path of every exported training image, in row order.
      test_files: relative paths of the exported clean test images, or None when not exported.
      class_names: folder name of each label.
    """
    m = poisons.manifest
    n = len(poisons.x)
    method = str(m.get("method", "unknown"))
    if _secret_rows(m):
        return _build(poisons, m, method, train_files, test_files, class_names, int(m.get("num_poisoned", n)),
                      None)
    protected = (np.arange(n) if poisons.protected_positions is None
                 else np.asarray(poisons.protected_positions, np.int64))
    return _build(poisons, m, method, train_files, test_files, class_names, int(len(protected)),
                  [train_files[i] for i in protected.tolist()])


def _secret_rows(manifest: dict[str, Any]) -> bool:
    """Whether the manifest says its protected rows are secret (a radioactive mark)."""
    return str(manifest.get("protected_rows", "")).startswith("secret")


def _build(poisons: PoisonSet, m: dict[str, Any], method: str, train_files: Sequence[str],
           test_files: Sequence[str] | None, class_names: Sequence[str], num_protected: int,
           protected_files: list[str] | None) -> dict[str, Any]:
    n = len(poisons.x)
    clean = n - num_protected
    reference = _method_reference(method)
    target_size = int(m.get("target_size") or 0)
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "method": method,
        "method_reference": reference,
        "settings": {k: m[k] for k in SETTING_KEYS if k in m},
        "budget": _budget(m),
        "source_dataset": {"spec": m.get("dataset"), "content_hash": m.get("dataset_content_hash"),
                           "training_images_used": n, "held_out_target_set": target_size},
        "splits": {
            "train": {"files": len(train_files), "protected": num_protected, "clean": clean,
                      "statement": ("every training image carries protection" if clean == 0 and protected_files
                                    is not None else
                                    f"{num_protected} of {n} training images carry protection (a share of each "
                                    "class); the others are unchanged originals" if protected_files is not None
                                    else f"{num_protected} of {n} training images carry a secret mark; which ones "
                                    "is secret (only the owner's private key records it)")},
            "test": None if test_files is None else {
                "files": len(test_files), "protected": 0,
                "statement": "the source's test split, unchanged (for measuring what a model learned)"},
            "not_included": ({"images": target_size,
                              "statement": f"{target_size} training images of the source were held out as the "
                                           "attack's target set and are not in this folder"}
                             if target_size else None),
        },
        "protected_files": ("secret" if protected_files is None else protected_files if clean else "all of train/"),
        "class_names": list(class_names),
        "made_by": {"toolkit": TOOLKIT, "library_versions": m.get("library_versions"),
                    "generated": m.get("created"), "poison_manifest_format": m.get("format_version")},
        "cite": [reference, TOOLKIT],
    }


def _marked(sheet: dict[str, Any]) -> bool:
    return sheet["protected_files"] == "secret"


def _what_was_made(sheet: dict[str, Any]) -> str:
    return "marked (\"radioactive\")" if _marked(sheet) else "protected (\"unlearnable\")"


def _intent(sheet: dict[str, Any]) -> str:
    """What the protection is for: a mark proves use; the other methods make the data unlearnable."""
    if _marked(sheet):
        return ("Models trained on `train/` learn as usual but carry a trace of the mark, which the owner's "
                "private key can detect with a p-value.")
    return "Models trained on `train/` are meant to generalise poorly."


def to_markdown(sheet: dict[str, Any]) -> str:
    """README.md text of a datasheet from :func:`build`."""
    s, b, src = sheet["splits"], sheet["budget"], sheet["source_dataset"]
    lines = [
        "# Protected dataset",
        "",
        f"This folder was made by `ntga.export` from a {_what_was_made(sheet)} copy of "
        f"`{src['spec']}` (content hash `{str(src['content_hash'])[:16]}...`). {_intent(sheet)} The images look "
        "almost like the originals.",
        "",
        "## What was done",
        "",
        f"- Method: `{sheet['method']}` ({sheet['method_reference']})",
        f"- Settings: " + (", ".join(f"{k} = {v}" for k, v in sheet["settings"].items()) or "defaults"),
        f"- Budget: {b['statement']}",
        "",
        "## What is in this folder",
        "",
        f"- `train/<class>/`: {s['train']['files']} images; {s['train']['statement']}.",
    ]
    if s["test"] is not None:
        lines.append(f"- `test/<class>/`: {s['test']['files']} images; {s['test']['statement']}.")
    else:
        lines.append("- No test split was exported.")
    if s["not_included"] is not None:
        lines.append(f"- Not included: {s['not_included']['statement']}.")
    if sheet["protected_files"] not in ("all of train/", "secret"):
        lines.append("- Which training files are protected: `datasheet.json`, key `protected_files`.")
    lines += [
        "- `datasheet.json`: all of the above, machine-readable.",
        "",
        "## Made by",
        "",
        f"{sheet['made_by']['toolkit']} Generated {sheet['made_by']['generated']}; library versions: "
        + ", ".join(f"{k} {v}" for k, v in (sheet["made_by"]["library_versions"] or {}).items()) + ".",
        "",
        "## Cite",
        "",
        *[f"- {c}" for c in sheet["cite"]],
        "",
    ]
    return "\n".join(lines)
