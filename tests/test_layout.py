"""The package layout's one rule: data and imports flow defenses -> ntga, never back (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

NTGA = Path(__file__).resolve().parents[1] / "ntga"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_module_under_ntga_imports_defenses():
    offenders = {str(p.relative_to(NTGA.parent)): sorted(m for m in _imported_modules(p)
                                                         if m == "defenses" or m.startswith("defenses."))
                 for p in sorted(NTGA.rglob("*.py"))}
    offenders = {path: mods for path, mods in offenders.items() if mods}
    assert not offenders, f"ntga must not import defenses: {offenders}"
    assert len(list(NTGA.rglob("*.py"))) > 50  # the scan saw the package
