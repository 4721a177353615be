"""The package's shape: lower wings never import higher ones, and no import circle anywhere.

Read from the source (ast), so it costs milliseconds and names the offending line. An import inside a
function counts toward a circle like one at module level: moving an import into a function hides a
circle from the interpreter until that function runs, it does not remove it. Only imports under
``if TYPE_CHECKING:`` are left out of the circle check: they never run (annotations only).
"""

from __future__ import annotations

import ast
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

PACKAGE = Path(__file__).resolve().parents[1] / "ear_stream"
#: the data flow, lowest first: a module may import its own wing and the wings to its left
WINGS = ("errors", "model", "io", "inspect", "export", "stream", "review", "cli")


class Import(NamedTuple):
    """One ear_stream module an import statement names."""

    target: str
    line: int
    #: at module level (not inside a function, class body or ``if``)
    top_level: bool
    #: under ``if TYPE_CHECKING:``: never executed
    type_only: bool


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of every node under an ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) block."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            found.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return found


def imports(path: Path, module: str | None = None) -> list[Import]:
    """Every ear_stream module the file imports, wherever the import statement is (``module``: the file's
    dotted name, for relative imports; by default from its place in the package)."""
    tree = ast.parse(path.read_text())
    package = (module or module_name(path)).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    top_level = {id(node) for node in tree.body}
    type_only = type_checking_nodes(tree)
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
                found.append(Import(target, node.lineno, id(node) in top_level, id(node) in type_only))
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
        for target, line, *_ in imports(path):
            wing = wing_of(target)
            if wing is not None and WINGS.index(wing) > WINGS.index(source):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({source}) imports {target} ({wing})")
    assert not wrong, "\n".join(wrong)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports at run time, at module level or inside a function."""
    return {
        name: {i.target for i in imports(path) if not i.type_only and i.target in MODULES and i.target != name}
        for name, path in MODULES.items()
    }


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a path that ends where it starts, or None."""
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
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle_even_through_function_level_imports():
    cycle = find_circle(import_graph())
    if cycle:
        where = []
        for source, target in pairwise(cycle):
            lines = sorted({i.line for i in imports(MODULES[source]) if i.target == target and not i.type_only})
            where.append(f"{MODULES[source].relative_to(PACKAGE.parent)}:{','.join(map(str, lines))} -> {target}")
        raise AssertionError("import circle:\n" + "\n".join(where))


def test_the_circle_check_sees_function_level_and_skips_type_only_imports(tmp_path):
    """The check itself: an import inside a function is an edge, one under ``if TYPE_CHECKING:`` is not."""
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ear_stream.errors import ConfigError\n"
        "def f():\n    from ..model import config\n"
    )
    found = {i.target: i for i in imports(source, "ear_stream.inspect.mod")}
    assert found["ear_stream.errors"].type_only and not found["ear_stream.errors"].top_level
    assert not found["ear_stream.model.config"].type_only and not found["ear_stream.model.config"].top_level
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_the_installed_packages_are_every_wing_and_no_plain_workers():
    """pyproject lists packages by hand (workers/ installs as ear_stream_workers): a new wing must be listed."""
    import tomllib

    setup = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert set(setup["packages"]) == on_disk | {"ear_stream_workers"}
    assert setup["package-dir"] == {"ear_stream_workers": "workers"}
    harness = PACKAGE.parent / "workers"
    assert not (harness / "fake_cluster.py").exists() and not (harness / "autoscale_scenario.py").exists()
