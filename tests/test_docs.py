"""docs/design.md names only what exists: modules and files, CLI options, failure reasons, constants, metrics.

The design document is what code comments cite; a rename that leaves it behind turns it into fiction.
Every backticked name in it is checked against the code (read with ast and click, no heavy import).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ear_stream"
DESIGN = ROOT / "docs" / "design.md"
#: backticked names that are not this project's (Redis, Ray and browser terms the document explains)
FOREIGN_OPTIONS = {"--dashboard-host"}  # Ray's `ray start` flag, cited for the dashboard's bind address


def backticked() -> list[str]:
    return re.findall(r"`([^`\n]+)`", DESIGN.read_text())


@cache
def package_files() -> dict[str, list[Path]]:
    """Every file under the repository's code folders by name, for bare names such as `consumer.py`."""
    found: dict[str, list[Path]] = {}
    for folder in ("ear_stream", "workers", "csrc", "tests", "benchmarks", "tools"):
        for path in (ROOT / folder).rglob("*"):
            found.setdefault(path.name, []).append(path)
    return found


def path_exists(token: str) -> bool:
    """`io/decode.py` and `stream/` are relative to ear_stream/; `workers/…`, `tests/…`, `csrc/` to the root."""
    relative = token.rstrip("/")
    if "/" not in relative:
        return (ROOT / relative).exists() or (PACKAGE / relative).exists() or relative in package_files()
    return (PACKAGE / relative).exists() or (ROOT / relative).exists()


PATH_TOKEN = re.compile(r"^[a-z_][\w./-]*(\.py|\.h|\.cu|\.cpp|\.yml|\.yaml|/)$")


def test_every_file_and_module_named_exists():
    paths = {t for t in backticked() if PATH_TOKEN.match(t) and not t.startswith(("~", "/"))}
    assert len(paths) >= 20  # the check sees the document's names
    missing = sorted(t for t in paths if not path_exists(t))
    assert not missing, f"docs/design.md names files that do not exist: {missing}"


@cache
def cli_options() -> set[str]:
    import click

    from ear_stream.cli import main

    options: set[str] = set()
    todo: list[click.Command] = [main]
    while todo:
        cmd = todo.pop()
        for param in cmd.params:
            options.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
        if isinstance(cmd, click.Group):
            todo += list(cmd.commands.values())
    return options


def test_every_option_named_is_an_option_of_some_verb():
    named = {re.split(r"[ =\[]", t)[0] for t in backticked() if t.startswith("--")}
    assert len(named) >= 10
    unknown = sorted(named - cli_options() - FOREIGN_OPTIONS)
    assert not unknown, f"docs/design.md names options no verb has: {unknown}"


def reasons() -> set[str]:
    from ear_stream.errors import Reason

    return {r.value for r in Reason}


def test_the_reason_list_is_errors_reason():
    """The dead-letter paragraph lists exactly the dead-letter reasons, and every reason is documented."""
    text = DESIGN.read_text()
    paragraph = text[text.index("Reasons (`errors.Reason`)") :].split("\n\n")[0]
    listed = set(re.findall(r"`([a-z]+(?:_[a-z]+)+)`", paragraph))
    dead_letter_reasons = reasons() - {"invalid_frame"}  # invalid_frame is a scored row, not a dead letter
    assert listed == dead_letter_reasons, (listed - dead_letter_reasons, dead_letter_reasons - listed)
    assert "invalid_frame" in text


@cache
def defined_names() -> set[str]:
    """Module-level names, classes and their methods/fields, across ear_stream/ and workers/."""
    names: set[str] = set()
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "workers").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
                names.update(t.attr for t in targets if isinstance(t, ast.Attribute))
    return names


CONSTANT = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
DOTTED = re.compile(r"^(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*$")
FILE_SUFFIXES = (".py", ".json", ".pt", ".safetensors", ".ood", ".parquet", ".yml", ".yaml", ".h", ".cu", ".cpp")


def test_every_constant_and_dotted_name_is_defined():
    """`MAX_MANIFEST_BYTES`, `connection.atomic`, `WorkerConfig.max_batch_pixels`: each part is defined."""
    tokens = {t for t in backticked() if CONSTANT.match(t) or (DOTTED.match(t) and not t.endswith(FILE_SUFFIXES))}
    tokens -= {"manifest.json", "weights.safetensors", "checkpoint.pt"}
    env_vars = {t for t in tokens if t.startswith("EAR_")}  # environment variables: read somewhere in the code
    source = "\n".join(p.read_text() for p in [*PACKAGE.rglob("*.py"), *(ROOT / "workers").rglob("*.py")])
    missing = [t for t in env_vars if f'"{t}"' not in source]
    modules = {p.stem for p in PACKAGE.rglob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    for token in sorted(tokens - env_vars):
        parts = token.split(".")
        known = defined_names() | modules | {"ear_stream", "torch", "calibration", "scoring"}
        if not all(part in known for part in parts):
            missing.append(token)
    assert not missing, f"docs/design.md names what the code does not define: {missing}"


@cache
def metric_names() -> set[str]:
    source = "\n".join(p.read_text() for p in [*PACKAGE.rglob("*.py"), *(ROOT / "workers").rglob("*.py")])
    return set(re.findall(r'"(ear_[a-z_]+)"', source))


def test_every_metric_named_is_exported():
    named = {t for t in backticked() if re.match(r"^ear_[a-z_]+$", t) and t != "ear_stream_workers"}
    assert named, "the document names its metrics"
    missing = sorted(m for m in named if m.removesuffix("_total") not in metric_names() and m not in metric_names())
    assert not missing, f"docs/design.md names metrics nothing exports: {missing}"


def test_the_wing_order_is_the_layout_tests():
    """The wings sentence lists every wing, in the order tests/test_layout.py enforces."""
    from tests.test_layout import WINGS

    text = DESIGN.read_text()
    sentence = text[text.index("Wings, lowest first") :].split("\n\n")[0]
    order = [w for w in re.findall(r"`(\w+)/`", sentence) if w in WINGS]
    assert order == [w for w in WINGS if w != "errors"], order
