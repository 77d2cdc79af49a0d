"""Dependencies point one way (docs/architecture.md): read from the source with ``ast``, so a
back-arrow fails here before it becomes an import cycle somewhere else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xaicxr"

ALLOWED = {
    "io": {"errors", "progress", "io"},
    "plugins": {"errors", "io", "kerasgraph", "plugins", "hookimpl"},
    "analysis": {"errors", "progress", "io", "plugins", "kerasgraph", "analysis"},
    "executors": {"errors", "progress", "executors"},
}
"""What each folder may import from the rest of xaicxr (function-level imports included)."""


def imported(path: Path) -> set[str]:
    """The xaicxr modules ``path`` imports, as dotted names below ``xaicxr``."""
    module = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = module[:-1] if module[-1] != "__init__" else module[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                name = ".".join(base + ((node.module,) if node.module else ()))
            else:
                name = node.module or ""
            targets = [name] if node.module or not node.level else [f"{name}.{a.name}" for a in node.names]
            found.update(t for t in targets if t.startswith("xaicxr"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("xaicxr"))
    return {".".join(t.split(".")[1:]) or "hookimpl" for t in found}


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_folder_imports_only_what_lies_below_it(folder):
    wrong = {}
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for target in imported(path):
            if target.split(".")[0] not in ALLOWED[folder]:
                wrong.setdefault(str(path.relative_to(PACKAGE)), []).append(target)
    assert not wrong, f"imports against the layering: {wrong}"


def test_explainer_and_targets_do_not_import_each_other():
    explainer = imported(PACKAGE / "plugins" / "explainer.py")
    targets = imported(PACKAGE / "plugins" / "targets.py")
    assert not ("plugins.targets" in explainer and "plugins.explainer" in targets)


def test_private_keras_graph_internals_are_read_in_kerasgraph_only():
    private = ("_inbound_nodes", "_outbound_nodes", "_keras_history")
    users = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "kerasgraph.py"
             and any(name in p.read_text() for name in private)]
    plugins = PACKAGE.parent / "plugins"
    users += [str(p.relative_to(plugins)) for p in plugins.rglob("*.py")
              if any(name in p.read_text() for name in private)]
    assert users == []
