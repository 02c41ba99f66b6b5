"""The house of ``flux/``: seven packages over a ground floor, and one rule for the arrows
(../shared/LAYOUT.md, README's "Layout").

A package imports only its own modules, the packages drawn below it, and the ground floor —
eager, function-level and ``TYPE_CHECKING`` imports alike. Siblings never import each other;
nothing inside ``flux/`` imports the face (``flux/__init__.py``, ``flux/testing.py``) or
``cli/``. One exception: ``runtime`` may import ``inspect``'s failure signature. A
function-level import must say in a comment why it is not at the top (it keeps a heavy
dependency off the CLI's start-up path).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import flux
from flux._errors import FluxError

REPO = Path(__file__).resolve().parent.parent
FLUX = REPO / "flux"

GROUND = "ground"
FACE = "face"
# What each package may import besides itself and the ground floor.
BELOW: dict[str, set[str]] = {
    GROUND: set(),
    "store": set(),
    "capture": {"store"},
    "inspect": {"store"},
    "runtime": {"capture", "store"},
    "jobs": {"runtime", "inspect", "capture", "store"},
    "replay": {"runtime", "inspect", "capture", "store"},
    "server": {"jobs", "replay", "runtime", "inspect", "capture", "store"},
    FACE: {"jobs", "replay", "runtime", "inspect", "capture", "store", "server"},
}
EXCEPTIONS = {("runtime", "flux.inspect._signature")}
GROUND_FLOOR = {"__init__", "_errors", "_function", "_gitinfo", "_ids", "_jsoncodec",
                "_project", "_testgen", "_tracecontext", "_version", "testing"}
# The faces: the public names, and the shim old generated tests import (flux._testgen).
FACES = {"__init__", "testing", "_testgen"}


def package_of(module: str) -> str:
    """``flux.replay._bisect`` → ``replay``; ``flux._ids`` → ground; ``flux`` → the face."""
    parts = module.split(".")
    if parts == ["flux"] or (len(parts) == 2 and parts[1] in FACES):
        return FACE
    if len(parts) == 2 or parts[1] not in BELOW:
        return GROUND
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts.pop()
    return ".".join(parts)


def imported(path: Path) -> list[tuple[int, str, bool]]:
    """Every module ``path`` imports: (line, absolute name, inside a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package[:len(package) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # ``from flux.store import _lookup`` imports the module ``_lookup``.
                for alias in child.names:
                    name = f"{base}.{alias.name}"
                    target = name if _is_module(name) else base
                    found.append((child.lineno, target, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def _is_module(name: str) -> bool:
    parts = name.split(".")
    path = REPO.joinpath(*parts)
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def broken_rules() -> list[str]:
    problems: list[str] = []
    for path in sorted(FLUX.rglob("*.py")):
        source = module_name(path)
        pkg = package_of(source)
        lines = path.read_text(encoding="utf-8").splitlines()
        for line, target, in_function in imported(path):
            where = f"{path.relative_to(REPO)}:{line}"
            if target == "cli" or target.startswith("cli."):
                problems.append(f"{where}: flux/ imports the CLI ({target})")
                continue
            if in_function and not _commented(lines, line):
                problems.append(f"{where}: a function-level import of {target} without a "
                                "comment saying why it is not at the top")
            if target != "flux" and not target.startswith("flux."):
                continue
            to = package_of(target)
            if to == FACE and pkg != FACE:
                problems.append(f"{where}: {source} imports the face ({target})")
            elif to in (pkg, GROUND) or to in BELOW[pkg] or (pkg, target) in EXCEPTIONS:
                continue
            else:
                problems.append(f"{where}: {pkg} may not import {to} ({target})")
    for path in sorted((REPO / "cli").rglob("*.py")):
        for line, target, _ in imported(path):
            if target == "flux._testgen":
                problems.append(f"{path.relative_to(REPO)}:{line}: the compatibility shim "
                                f"{target} is for old generated tests, not for the CLI")
    return problems


def _commented(lines: list[str], line: int) -> bool:
    """A comment on the import's line (or its block's lines), or on the line above it."""
    here = lines[line - 1]
    above = lines[line - 2].strip() if line >= 2 else ""
    if "#" in here or above.startswith("#"):
        return True
    # ``from x import (\n a,  # why\n)``: a comment anywhere in the statement counts.
    end = line
    while end < len(lines) and ")" not in lines[end - 1] and "(" in lines[line - 1]:
        end += 1
        if "#" in lines[end - 1]:
            return True
    # Several imports in a row: the comment above the first one covers the block.
    first = line
    while first >= 2 and re.match(r"\s*(from|import) ", lines[first - 2]):
        first -= 1
    return first >= 2 and lines[first - 2].strip().startswith("#")


def test_every_import_in_flux_and_cli_keeps_the_rule() -> None:
    problems = broken_rules()
    assert not problems, "imports that break the layout rule:\n" + "\n".join(problems)


def test_the_rule_catches_a_sibling_import(tmp_path: Path) -> None:
    """The walker is not vacuous: a sibling import, an import of the face and an uncommented
    function-level import each fail it."""
    assert package_of("flux.replay._bisect") == "replay"
    assert package_of("flux._ids") == GROUND
    assert package_of("flux") == FACE
    assert "jobs" not in BELOW["replay"] and "replay" not in BELOW["jobs"]
    assert "inspect" not in BELOW["capture"] and "capture" not in BELOW["inspect"]
    assert "inspect" not in BELOW["runtime"]
    bad = FLUX / "replay" / "_layout_probe.py"
    bad.write_text("from flux.jobs._worker import run_job\nimport flux\n\n\n"
                   "def f():\n    from flux.store._lookup import fetch_record\n")
    try:
        problems = "\n".join(broken_rules())
    finally:
        bad.unlink()
    assert "flux/replay/_layout_probe.py:1: replay may not import jobs" in problems
    assert "flux/replay/_layout_probe.py:2: flux.replay._layout_probe imports the face" in problems
    assert "flux/replay/_layout_probe.py:6: a function-level import" in problems


def test_only_the_ground_floor_lives_at_the_root() -> None:
    at_root = {p.stem for p in FLUX.glob("*.py")}
    assert at_root <= GROUND_FLOOR, f"move these into a package: {sorted(at_root - GROUND_FLOOR)}"
    packages = {p.parent.name for p in FLUX.glob("*/__init__.py")}
    assert packages == {"store", "capture", "inspect", "runtime", "jobs", "replay", "server"}
    for init in FLUX.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc, f"{init.relative_to(REPO)} must say what lives there " \
                                        "and what it may import"


def test_every_flux_error_is_drawn_in_the_error_tree() -> None:
    for info in pkgutil.walk_packages(flux.__path__, "flux."):
        importlib.import_module(info.name)
    tree = importlib.import_module("flux._errors").__doc__ or ""
    drawn = set(re.findall(r"[├└]── (\w+)", tree)) | {"FluxError"}
    missing: list[str] = []
    pending: list[type] = [FluxError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("flux") and cls.__name__ not in drawn:
            missing.append(f"{cls.__module__}.{cls.__name__}")
    assert not missing, f"draw these in flux/_errors.py's tree: {missing}"
