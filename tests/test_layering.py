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


def imported(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """The xaicxr modules ``path`` (a file below ``root``) imports, as dotted names below
    ``xaicxr``; ``from M import n`` counts as importing ``M`` and ``M.n`` (``n`` may be a module:
    ``from xaicxr import stages``, ``from . import targets``)."""
    package = path.relative_to(root).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                name = ".".join(base + ((node.module,) if node.module else ()))
            else:
                name = node.module or ""
            targets = ([name] if node.module else []) + [f"{name}.{a.name}" for a in node.names]
            found.update(t for t in targets if t == "xaicxr" or t.startswith("xaicxr."))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name == "xaicxr" or a.name.startswith("xaicxr."))
    return {".".join(t.split(".")[1:]) or "hookimpl" for t in found}


def test_imports_are_read_in_every_form(tmp_path):
    """The reader itself: relative, absolute, ``from package import module``, function-level."""
    module = tmp_path / "xaicxr" / "io" / "example.py"
    module.parent.mkdir(parents=True)
    module.write_text("from ..plugins import Record\nfrom .. import stages\nimport xaicxr.analysis.stats\n"
                      "from xaicxr import compare\nfrom . import atomic\n"
                      "def f():\n    from xaicxr.plugins.targets import Target\n")
    got = {name.split(".")[0] for name in imported(module, tmp_path)}
    assert got == {"plugins", "stages", "analysis", "compare", "io", "hookimpl"}


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
    private = ("_inbound_nodes", "_outbound_nodes", "_keras_history", "_run_through_graph")
    users = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "kerasgraph.py"
             and any(name in p.read_text() for name in private)]
    plugins = PACKAGE.parent / "plugins"
    users += [str(p.relative_to(plugins)) for p in plugins.rglob("*.py")
              if any(name in p.read_text() for name in private)]
    assert users == []
