"""Loading the functions of a project from ``functions/``, and reloading one on change.

Each Python module holds one ``@function`` handler; each ``.wasm`` or ``.wat`` module is one
function named after its file (flux/runtime/wasm/_runner.py). A module that fails to load
does not stop the others: its error is reported with file and line, and the previous
version (if any) keeps serving until the file is fixed.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from flux._errors import FluxError
from flux._function import FunctionSpec, spec_of
from flux.runtime._sealed import sealed

MODULE_PREFIX = "flux_fn"
WASM_SUFFIXES = (".wasm", ".wat")
SUFFIXES = (".py", *WASM_SUFFIXES)


@dataclass(frozen=True)
class LoadError:
    file: Path
    message: str  # one sentence: "SyntaxError at line 3: invalid syntax"


@sealed  # frozen to mypy; made at run time without a setattr per field
class RouteMatch:
    """What is routed at a path: the function taking the request's method (None: none
    does — a 405) with its typed path parameters, and every method the path takes."""

    spec: FunctionSpec | None
    params: dict[str, Any]
    allowed: tuple[str, ...]


@dataclass
class Registry:
    """The functions being served, by name and by route."""

    by_name: dict[str, FunctionSpec] = field(default_factory=dict)
    by_file: dict[Path, str] = field(default_factory=dict)
    # The ASGI app Flux serves ([asgi]): every request no function takes. Not routed like a
    # function, nor a target for jobs and invoke; found by name for replay and resume.
    asgi: FunctionSpec | None = None
    # Literal routes by path, and the routes with parameters, in loading order: made on the
    # first match after a change (put/drop), so a request finds a literal route with one
    # dict lookup instead of walking every function's pattern.
    _index: tuple[dict[str, list[FunctionSpec]], list[FunctionSpec]] | None = field(
        default=None, init=False, repr=False, compare=False)

    def named(self, name: str | None) -> FunctionSpec | None:
        """The function (or the ASGI app) a record names."""
        if name is None:
            return None
        if self.asgi is not None and name == self.asgi.name:
            return self.asgi
        return self.by_name.get(name)

    def route(self, path: str) -> FunctionSpec | None:
        """A function routed at ``path``, whatever its methods."""
        found = self._matching(path.strip("/"))
        return found[0][0] if found else None

    def match(self, method: str, path: str) -> RouteMatch | None:
        """The function for ``method`` at ``path`` (None: nothing is routed there). Literal
        routes come before those with parameters; among those, the order of loading."""
        found = self._matching(path.strip("/"))
        if not found:
            return None
        allowed: list[str] = []
        for spec, params in found:
            if spec.allows(method):
                return RouteMatch(spec, params, ())
            for name in (*spec.methods, *(("HEAD",) if "GET" in spec.methods else ())):
                if name not in allowed:
                    allowed.append(name)
        return RouteMatch(None, {}, tuple(allowed))

    def table(self) -> list[tuple[str, str, FunctionSpec]]:
        """The route table: (method, /route, spec), in the order requests are matched."""
        specs = sorted(self.by_name.values(),
                       key=lambda s: (not s.pattern.literal, s.route if s.pattern.literal else ""))
        return [(m, "/" + s.route, s) for s in specs for m in s.methods]

    def _matching(self, path: str) -> list[tuple[FunctionSpec, dict[str, Any]]]:
        index = self._index
        if index is None:
            index = self._index = self._indexed()
        literal, patterned = index
        found: list[tuple[FunctionSpec, dict[str, Any]]] = [
            (spec, {}) for spec in literal.get(path, ())]
        for spec in patterned:
            params = spec.pattern.match(path)
            if params is not None:
                found.append((spec, params))
        return found

    def _indexed(self) -> tuple[dict[str, list[FunctionSpec]], list[FunctionSpec]]:
        literal: dict[str, list[FunctionSpec]] = {}
        patterned: list[FunctionSpec] = []
        for spec in self.by_name.values():
            if spec.pattern.literal:
                literal.setdefault(spec.pattern.text, []).append(spec)
            else:
                patterned.append(spec)
        return literal, patterned

    def put(self, file: Path, spec: FunctionSpec) -> None:
        old = self.by_file.get(file)
        if old is not None and old != spec.name:
            self.by_name.pop(old, None)
        self.by_name[spec.name] = spec
        self.by_file[file] = spec.name
        self._index = None

    def drop(self, file: Path) -> str | None:
        name = self.by_file.pop(file, None)
        if name is not None:
            self.by_name.pop(name, None)
        self._index = None
        return name


@dataclass(frozen=True)
class Loaded:
    spec: FunctionSpec | None
    error: LoadError | None
    millis: float


def load_file(path: Path) -> Loaded:
    """Import (or re-import) one module and find its single @function handler."""
    started = time.perf_counter()
    if path.suffix in WASM_SUFFIXES:
        return _load_wasm(path, started)
    name = f"{MODULE_PREFIX}_{path.stem}"
    try:
        module = _import(name, path)
    except SyntaxError as exc:
        return _failed(path, f"SyntaxError at line {exc.lineno}: {exc.msg}", started)
    except Exception as exc:
        line = _line_in(path, exc)
        where = f" at line {line}" if line else ""
        return _failed(path, f"{type(exc).__name__}{where}: {exc}", started)
    specs = {id(s): s for obj in vars(module).values() if (s := spec_of(obj)) is not None}
    found = [s for s in specs.values() if Path(s.file).resolve() == path.resolve()]
    if len(found) > 1:
        names = ", ".join(sorted(s.name for s in found))
        return _failed(path, f"holds {len(found)} @function handlers ({names}); "
                             "put each in its own module", started)
    millis = (time.perf_counter() - started) * 1000
    return Loaded(spec=found[0] if found else None, error=None, millis=millis)


def load_all(functions_dir: Path, registry: Registry) -> list[LoadError]:
    """Load every module of ``functions/`` into ``registry``; return the errors."""
    if str(functions_dir) not in sys.path:
        sys.path.insert(0, str(functions_dir))  # so functions can import their helpers
    errors = []
    seen: dict[tuple[str, str], Path] = {}
    for path in sorted(functions_dir.iterdir() if functions_dir.is_dir() else ()):
        if path.suffix not in SUFFIXES or path.name.startswith(("_", ".")):
            continue
        loaded = load_file(path)
        if loaded.error:
            errors.append(loaded.error)
        elif loaded.spec is not None:
            spec = loaded.spec
            taken = [(m, seen[(spec.route, m)]) for m in spec.methods if (spec.route, m) in seen]
            if taken:
                method, other = taken[0]
                shown = f"route /{spec.route}" if spec.methods == ("POST",) and \
                    method == "POST" else f"{method} /{spec.route}"
                errors.append(LoadError(path, f"{shown} is already served by {other.name}"))
                continue
            seen.update({(spec.route, m): path for m in spec.methods})
            registry.put(path, spec)
    return errors


def function_file(changed: Path) -> Path | None:
    """The function file to reload when ``changed`` changed: itself for a module, the
    module beside it for a Wasm function's sidecar ``<name>.toml``; None otherwise."""
    if changed.name.startswith(("_", ".")):
        return None
    if changed.suffix in SUFFIXES:
        return changed
    if changed.suffix == ".toml":
        for suffix in WASM_SUFFIXES:
            if (module := changed.with_suffix(suffix)).exists():
                return module
    return None


def _load_wasm(path: Path, started: float) -> Loaded:
    # wasmtime (~100 ms): only when a project has Wasm functions
    from flux.runtime.wasm._runner import (
        load_module,  # wasmtime, only for projects with Wasm functions
    )

    try:
        spec = load_module(path)
    except FluxError as exc:
        return _failed(path, exc.message, started)
    except OSError as exc:
        return _failed(path, f"cannot read {path.name}: {exc.strerror}", started)
    return Loaded(spec=spec, error=None, millis=(time.perf_counter() - started) * 1000)


def _import(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if previous is not None:
            sys.modules[name] = previous
        else:
            sys.modules.pop(name, None)
        raise
    return module


def _line_in(path: Path, exc: BaseException) -> int | None:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename).resolve() == path.resolve():
            return frame.lineno
    return None


def _failed(path: Path, message: str, started: float) -> Loaded:
    return Loaded(spec=None, error=LoadError(path, message),
                  millis=(time.perf_counter() - started) * 1000)
