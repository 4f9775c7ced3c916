"""The package's layers import only downwards (``python tests/test_layers.py`` prints the graph).

Units are the top-level modules and sub-packages of ``medhdm``. A unit may import units
of lower layers only: never one of its own layer (other than itself) nor of a higher one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medhdm"

#: lowest first; units of one layer do not import each other
LAYERS: list[tuple[str, ...]] = [
    ("io",),
    ("data", "explain"),
    ("metrics",),
    ("models",),
    ("testing", "transforms"),
    ("pipeline",),
    ("evaluation",),
    ("report", "export"),
    ("study",),
    ("cohort", "pacs"),
    ("demo",),
    ("cli",),
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _unit_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imported_units(path: Path) -> set[str]:
    """The medhdm units that ``path`` imports (relative or absolute imports, at any depth in the file)."""
    tree = ast.parse(path.read_text())
    depth = len(path.relative_to(PACKAGE).parts) - 1  # folders below medhdm/
    units = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > depth:
                    continue
                base = list(path.relative_to(PACKAGE).parts[: depth - (node.level - 1)])
                parts = base + (node.module.split(".") if node.module else [])
                if parts:
                    units.add(parts[0].removesuffix(".py"))
                else:  # "from .. import x" at the package root: x are units (or __version__)
                    units.update(a.name for a in node.names)
            elif node.module and node.module.split(".")[0] == "medhdm":
                parts = node.module.split(".")
                units.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "medhdm" and len(parts) > 1:
                    units.add(parts[1])
    return units


def import_graph() -> dict[str, set[str]]:
    """unit -> the other medhdm units it imports (``__version__`` and the root ``__init__`` left out)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue
        unit = _unit_of(path)
        graph.setdefault(unit, set()).update(_imported_units(path) - {unit, "__version__", "__init__"})
    return graph


def test_every_unit_has_a_layer():
    assert set(import_graph()) <= set(LAYER), sorted(set(import_graph()) - set(LAYER))


def test_imports_run_only_downwards():
    wrong = [
        f"{a} (layer {LAYER[a]}) imports {b} (layer {LAYER.get(b)})"
        for a, targets in import_graph().items()
        for b in sorted(targets)
        if LAYER.get(b, 99) >= LAYER[a]
    ]
    assert not wrong, "\n".join(wrong)


if __name__ == "__main__":
    graph = import_graph()
    for i, units in enumerate(LAYERS):
        for unit in units:
            print(f"layer {i} {unit:<12} -> {', '.join(sorted(graph.get(unit, ()))) or '-'}")
    sys.exit(0)
