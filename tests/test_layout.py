"""The package's shape: lower wings never import higher ones, and no module-level import circle anywhere.

Read from the source (ast), so it costs milliseconds and names the offending line.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ear_stream"
#: the data flow, lowest first: a module may import its own wing and the wings to its left
WINGS = ("errors", "model", "io", "inspect", "stream", "review", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported ear_stream module, line, at module level) for every import in a file."""
    tree = ast.parse(path.read_text())
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("ear_stream"):
                found.append((target, node.lineno, id(node) in top_level))
    return found


def wing_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else None


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_lower_wings_never_import_higher_ones():
    wrong = []
    for name, path in MODULES.items():
        source = wing_of(name)
        if source is None:
            continue
        for target, line, _ in imports(path):
            wing = wing_of(target)
            if wing is not None and WINGS.index(wing) > WINGS.index(source):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({source}) imports {target} ({wing})")
    assert not wrong, "\n".join(wrong)


def test_no_module_level_import_circle():
    graph = {
        name: {t for t, _, top in imports(path) if top and t in MODULES and t != name} for name, path in MODULES.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, " -> ".join(cycle)


def test_the_installed_packages_are_every_wing_and_no_plain_workers():
    """pyproject lists packages by hand (workers/ installs as ear_stream_workers): a new wing must be listed."""
    import tomllib

    setup = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert set(setup["packages"]) == on_disk | {"ear_stream_workers"}
    assert setup["package-dir"] == {"ear_stream_workers": "workers"}
    harness = PACKAGE.parent / "workers"
    assert not (harness / "fake_cluster.py").exists() and not (harness / "autoscale_scenario.py").exists()
