"""``flux check``: find code in a project's functions that takes values from the outside
world behind ``ctx``'s back.

A function replays only if everything it learns from outside — the time, random numbers,
ids, secrets, HTTP answers, query results — comes through ``ctx`` and so onto the tape. A
``time.time()`` or ``requests.get()`` in a handler works today and silently breaks replay,
resume and bisect later. This check reads the source with ``ast``; it never imports it
(importing runs user code, and a module that does not import still deserves an answer).

Names are resolved through the module's imports, scope by scope: ``from datetime import
datetime as dt; dt.now()``, ``import random as r``, ``from os import environ`` are caught,
and a parameter or local variable that happens to be called ``time`` is not the module. A
line carrying ``# flux: allow`` (every rule) or ``# flux: allow[env,file]`` (those rules) is
accepted as deliberate.
"""

from __future__ import annotations

import ast
import importlib
import io
import re
import sys
import tokenize
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from flux._errors import ConfigError
from flux._project import CONFIG_NAME, find_root

# What each rule means, said once: "<the call> <reason>".
REASONS = {
    "time": "reads the clock outside ctx: a replay would see another time",
    "random": "draws randomness outside ctx: a replay would draw other values",
    "uuid": "makes a UUID outside ctx: a replay would make another one",
    "env": "reads the process environment outside ctx: a replay may run where it differs",
    "file": "reads or writes a file outside ctx: neither is recorded for replay",
    "socket": "opens a network connection outside ctx: nothing it exchanges is recorded",
    "uncaptured": "reaches outside through no recorded path: its calls are not on the "
                  "tape, and a replay or resume would make them again",
    "subprocess": "runs a process outside ctx: its output and effects are not recorded",
    "db": "connects to a database outside ctx.db: its queries are not recorded and not "
          "part of the execution's transaction",
}

_CLOCK = "ctx.now()"
_DURATION = "ctx.now(), or `with ctx.span(name):` to time a block"
_ENV = 'ctx.secrets.get("NAME") for a secret, ctx.config["key"] for a setting ([app] in flux.toml)'
_FILE = "ctx.db for data, ctx.config for settings ([app] in flux.toml)"
_STEP = "ctx.step(name, fn, *args), which records its result once and serves it on replay"
_NETWORK = f"ctx.http for HTTP (or any captured client: httpx, requests, aiohttp, urllib); {_STEP}"
_PROCESS = f"{_STEP}"
_DB = "ctx.db.execute / fetchone / fetchall / fetchval"
_DB_OR_STEP = f"ctx.db for SQL on the execution's own database; {_STEP} for anything else"

# Libraries whose traffic goes through no recorded path. The HTTP clients (httpx, requests,
# urllib3, aiohttp, http.client, urllib.request) and the SDKs built on them (stripe,
# openai, boto3, twilio…) are captured at run time (flux/runtime/_intercept.py) and not listed.
UNCAPTURED: dict[str, tuple[str, str]] = {
    "sqlalchemy": ("SQLAlchemy (its own database connections)", _DB_OR_STEP),
    "psycopg2": ("psycopg2 (its own database connections)", _DB),
    "asyncpg": ("asyncpg (its own database connections)", _DB),
    "pymysql": ("PyMySQL (a MySQL driver)", _STEP),
    "MySQLdb": ("mysqlclient (a MySQL driver)", _STEP),
    "mysql": ("mysql-connector (a MySQL driver)", _STEP),
    "aiomysql": ("aiomysql (a MySQL driver)", _STEP),
    "pymongo": ("PyMongo (a MongoDB driver)", _STEP),
    "motor": ("Motor (a MongoDB driver)", _STEP),
    "redis": ("redis (a Redis client)", _STEP),
    "aioredis": ("aioredis (a Redis client)", _STEP),
    "pymemcache": ("pymemcache (a memcached client)", _STEP),
    "memcache": ("python-memcached", _STEP),
    "smtplib": ("smtplib (SMTP)", _STEP),
    "aiosmtplib": ("aiosmtplib (SMTP)", _STEP),
    "grpc": ("gRPC", _STEP),
    "kafka": ("kafka-python", _STEP),
    "aiokafka": ("aiokafka", _STEP),
    "confluent_kafka": ("confluent-kafka", _STEP),
    "pika": ("pika (AMQP)", _STEP),
    "aio_pika": ("aio-pika (AMQP)", _STEP),
    "nats": ("nats (NATS)", _STEP),
    "zmq": ("pyzmq (ZeroMQ)", _STEP),
    "paramiko": ("paramiko (SSH)", _STEP),
    "ftplib": ("ftplib (FTP)", _STEP),
    "websockets": ("websockets", _STEP),
    "cassandra": ("the Cassandra driver", _STEP),
    "neo4j": ("the Neo4j driver", _STEP),
    "ldap3": ("ldap3 (LDAP)", _STEP),
}


# Calls that bypass ctx, as (pattern on the resolved name, rule, what to use instead). The
# first pattern that matches wins, so specific ones come before module-wide ones.
CALLS: tuple[tuple[str, str, str], ...] = (
    ("time.time", "time", "ctx.now().timestamp()"),
    ("time.time_ns", "time", _CLOCK),
    ("time.monotonic", "time", _DURATION),
    ("time.monotonic_ns", "time", _DURATION),
    ("time.perf_counter", "time", _DURATION),
    ("time.perf_counter_ns", "time", _DURATION),
    ("datetime.datetime.now", "time", _CLOCK),
    ("datetime.datetime.utcnow", "time", "ctx.now() (already UTC and timezone-aware)"),
    ("datetime.datetime.today", "time", _CLOCK),
    ("datetime.date.today", "time", "ctx.now().date()"),
    ("arrow.now", "time", _CLOCK),
    ("arrow.utcnow", "time", _CLOCK),
    ("pendulum.now", "time", _CLOCK),
    ("pendulum.today", "time", _CLOCK),
    ("pandas.Timestamp.now", "time", _CLOCK),
    ("pandas.Timestamp.utcnow", "time", _CLOCK),
    ("pandas.Timestamp.today", "time", _CLOCK),
    ("uuid.uuid1", "uuid", "ctx.uuid()"),
    ("uuid.uuid4", "uuid", "ctx.uuid()"),
    ("uuid.uuid6", "uuid", "ctx.uuid()"),
    ("uuid.uuid7", "uuid", "ctx.uuid()"),
    ("uuid6.uuid*", "uuid", "ctx.uuid()"),
    ("os.urandom", "random", "ctx.uuid().bytes (16 random bytes)"),
    ("os.getrandom", "random", "ctx.uuid().bytes (16 random bytes)"),
    ("random.randint", "random", "a + int(ctx.random() * (b - a + 1))"),
    ("random.randrange", "random", "start + int(ctx.random() * (stop - start))"),
    ("random.choice", "random", "seq[int(ctx.random() * len(seq))]"),
    ("random.*", "random", "ctx.random()"),
    ("numpy.random.*", "random", "ctx.random()"),
    ("secrets.compare_digest", "", ""),  # constant-time comparison: no randomness
    ("secrets.token_*", "random", "ctx.uuid().hex"),
    ("secrets.*", "random", "ctx.random()"),
    ("os.getenv", "env", _ENV),
    ("os.getenvb", "env", _ENV),
    ("os.putenv", "env", _ENV),
    ("os.unsetenv", "env", _ENV),
    ("builtins.open", "file", _FILE),
    ("io.open", "file", _FILE),
    ("io.open_code", "file", _FILE),
    ("os.open", "file", _FILE),
    ("os.listdir", "file", _FILE),
    ("os.scandir", "file", _FILE),
    ("os.walk", "file", _FILE),
    ("glob.glob", "file", _FILE),
    ("glob.iglob", "file", _FILE),
    ("codecs.open", "file", _FILE),
    ("gzip.open", "file", _FILE),
    ("bz2.open", "file", _FILE),
    ("lzma.open", "file", _FILE),
    ("tarfile.open", "file", _FILE),
    ("zipfile.ZipFile", "file", _FILE),
    ("shelve.open", "file", _FILE),
    ("dbm.open", "file", _FILE),
    ("socket.socket", "socket", _NETWORK),
    ("socket.create_connection", "socket", _NETWORK),
    ("socket.create_server", "socket", _NETWORK),
    ("socket.socketpair", "socket", _NETWORK),
    ("socket.fromfd", "socket", _NETWORK),
    ("socket.getaddrinfo", "socket", _NETWORK),
    ("socket.getnameinfo", "socket", _NETWORK),
    ("socket.gethostbyname*", "socket", _NETWORK),
    ("socket.gethostbyaddr", "socket", _NETWORK),
    ("socket.gethostname", "env", 'ctx.config["key"] ([app] in flux.toml)'),
    ("socket.getfqdn", "socket", _NETWORK),
    ("asyncio.open_connection", "socket", _NETWORK),
    ("asyncio.open_unix_connection", "socket", _NETWORK),
    ("asyncio.start_server", "socket", _NETWORK),
    ("asyncio.start_unix_server", "socket", _NETWORK),
    ("ftplib.FTP*", "socket", _NETWORK),
    ("subprocess.run", "subprocess", _PROCESS),
    ("subprocess.call", "subprocess", _PROCESS),
    ("subprocess.check_call", "subprocess", _PROCESS),
    ("subprocess.check_output", "subprocess", _PROCESS),
    ("subprocess.Popen", "subprocess", _PROCESS),
    ("subprocess.getoutput", "subprocess", _PROCESS),
    ("subprocess.getstatusoutput", "subprocess", _PROCESS),
    ("os.system", "subprocess", _PROCESS),
    ("os.popen", "subprocess", _PROCESS),
    ("os.exec*", "subprocess", _PROCESS),
    ("os.spawn*", "subprocess", _PROCESS),
    ("os.posix_spawn*", "subprocess", _PROCESS),
    ("os.fork", "subprocess", _PROCESS),
    ("asyncio.create_subprocess_*", "subprocess", _PROCESS),
    ("smtplib.SMTP*", "socket", _STEP),
    ("psycopg.connect", "db", _DB),
    ("psycopg.Connection.connect", "db", _DB),
    ("psycopg.AsyncConnection.connect", "db", _DB),
    ("psycopg_pool.*ConnectionPool", "db", _DB),
    ("psycopg2.connect", "db", _DB),
    ("asyncpg.connect", "db", _DB),
    ("asyncpg.create_pool", "db", _DB),
    ("sqlite3.connect", "db", _DB),
    ("sqlalchemy.create_engine", "db", _DB),
    ("sqlalchemy.ext.asyncio.create_async_engine", "db", _DB),
)

# Time functions that read the clock only when not given a time: localtime() vs
# localtime(ts). The number is how many arguments mean "a time was given".
CLOCK_WITHOUT_ARGUMENT = {"time.localtime": 1, "time.gmtime": 1, "time.ctime": 1,
                          "time.asctime": 1, "time.strftime": 2}

# Names read (not called) that bypass ctx: ``os.environ["X"]``, ``environ.get("X")``.
READS = {"os.environ": ("env", _ENV), "os.environb": ("env", _ENV)}

# Methods that touch a file whatever their receiver: the names are pathlib's (also
# zipfile.Path's and importlib.resources'), and nothing else in a handler spells them so.
FILE_METHODS = frozenset({"read_text", "read_bytes", "write_text", "write_bytes"})
# Methods that touch a file when the receiver is known to be a path (``.open()`` alone is
# too common a name to flag on anything).
PATH_FILE_METHODS = frozenset({"open", "iterdir", "glob", "rglob"})
PATH_FACTORIES = frozenset({"pathlib.Path", "pathlib.PurePath", "pathlib.PosixPath",
                            "pathlib.WindowsPath", "pathlib.Path.cwd", "pathlib.Path.home",
                            "importlib.resources.files"})
PATH_RETURNING = frozenset({"joinpath", "with_name", "with_suffix", "with_stem", "resolve",
                            "absolute", "expanduser"})

_ALLOW = re.compile(r"#\s*flux:\s*allow\b(?:\[([A-Za-z_,\s]*)\])?")
_SKIP_DIRS = frozenset({"__pycache__", "node_modules", "venv", "site-packages"})


@dataclass(frozen=True)
class Finding:
    """One place that bypasses ctx. ``line`` and ``col`` count from 1."""

    file: str
    line: int
    col: int
    rule: str
    message: str
    suggestion: str


@dataclass(frozen=True)
class CheckResult:
    """Every finding of a check, in file order, and how many files were read — of which
    ``followed`` are the project's modules reached through the functions' imports."""

    findings: tuple[Finding, ...]
    files_checked: int
    followed: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        """2 when a file could not be read as Python, 1 on findings, 0 when clean."""
        if any(f.rule == "syntax" for f in self.findings):
            return 2
        return 1 if self.findings else 0

    def to_json(self) -> dict[str, Any]:
        return {"findings": [asdict(f) for f in self.findings],
                "files_checked": self.files_checked, "followed": list(self.followed)}


def check_paths(paths: Sequence[Path], *, cwd: Path | None = None) -> CheckResult:
    """Check files and directories (none: the functions/ of the project around ``cwd``),
    and the project's own modules they import, transitively: a helper module that sends
    mail is the function's outside access too."""
    here = (cwd or Path.cwd()).resolve()
    files = files_to_check(paths, here)
    findings: list[Finding] = []
    seen = {p.resolve() for p in files}
    queue = list(files)
    followed: list[str] = []
    while queue:
        path = queue.pop(0)
        findings.extend(check_file(path, shown=_shown(path, here)))
        root = find_root(path.parent)
        if root is None:
            continue
        for module in project_imports(path, root):
            if module.resolve() not in seen:
                seen.add(module.resolve())
                queue.append(module)
                followed.append(_shown(module, here))
    return CheckResult(tuple(findings), len(seen), tuple(followed))


def project_imports(path: Path, root: Path) -> list[Path]:
    """The project's own modules ``path`` imports (resolved as the loader does: from
    ``functions/`` and from the project root; relative imports from the file's package).
    Installed libraries are not followed: the runtime captures what they send."""
    try:
        tree = ast.parse(path.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return []
    bases = [root / "functions", root]
    found: list[Path] = []
    for node in ast.walk(tree):
        names: list[tuple[list[Path], str]] = []
        if isinstance(node, ast.Import):
            names = [(bases, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                dirs = [base]
            else:
                dirs = bases
            module = node.module or ""
            names = [(dirs, module)] if module else []
            names += [(dirs, f"{module}.{a.name}" if module else a.name) for a in node.names]
        for dirs, dotted in names:
            for directory in dirs:
                target = _module_file(directory, dotted, root)
                if target is not None and target not in found:
                    found.append(target)
    return found


def _module_file(directory: Path, dotted: str, root: Path) -> Path | None:
    parts = [p for p in dotted.split(".") if p]
    if not parts:
        return None
    candidate = directory.joinpath(*parts)
    for path in (candidate.with_suffix(".py"), candidate / "__init__.py"):
        if path.is_file():
            inside = path.resolve().relative_to(root.resolve()).parts \
                if path.resolve().is_relative_to(root.resolve()) else None
            if inside is None or any(p.startswith(".") or p in _SKIP_DIRS for p in inside):
                return None
            return path
    return None


def files_to_check(paths: Sequence[Path], cwd: Path) -> list[Path]:
    """The Python files ``paths`` stand for: a file itself; a project directory (with a
    flux.toml) its functions/; any other directory every ``.py`` file under it."""
    if not paths:
        root = find_root(cwd)
        if root is None:
            raise ConfigError(f"no {CONFIG_NAME} in {cwd} or any parent directory, and no "
                              "PATH given", hint="run flux check inside a project, or give it "
                                                 "a file or directory")
        paths = [root / "functions"]
    files: dict[Path, None] = {}
    for given in paths:
        path = given if given.is_absolute() else cwd / given
        if not path.exists():
            raise ConfigError(f"{given} does not exist")
        if path.is_dir():
            if (path / CONFIG_NAME).is_file() and (path / "functions").is_dir():
                path = path / "functions"
            files.update(dict.fromkeys(_python_files(path)))
        else:
            files[path] = None
    return list(files)


def _python_files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*.py")):
        parts = path.relative_to(directory).parts[:-1]
        if not any(p.startswith(".") or p in _SKIP_DIRS for p in parts):
            yield path


def _shown(path: Path, cwd: Path) -> str:
    try:
        return str(path.resolve().relative_to(cwd))
    except ValueError:
        return str(path)


def check_file(path: Path, *, shown: str | None = None) -> list[Finding]:
    """The findings of one file; a file that cannot be read as Python is one ``syntax``
    finding."""
    name = shown or str(path)
    try:
        source = path.read_bytes()
    except OSError as exc:
        return [Finding(name, 1, 1, "syntax", f"cannot read the file: {exc.strerror}",
                        "make it readable; nothing in it was checked")]
    return check_source(source, name)


def check_source(source: str | bytes, filename: str = "<source>") -> list[Finding]:
    """The findings of one module's source, sorted by position."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        return [Finding(filename, exc.lineno or 1, exc.offset or 1, "syntax",
                        f"not valid Python: {exc.msg}",
                        "fix the syntax; nothing in this file was checked")]
    except ValueError as exc:  # null bytes (Python 3.11)
        return [Finding(filename, 1, 1, "syntax", f"not valid Python: {exc}",
                        "fix the file; nothing in it was checked")]
    text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
    allowed = _allowances(text)
    checker = _Checker(filename)
    checker.visit(tree)
    kept = [f for f, end in checker.found if not _is_allowed(f, end, allowed)]
    return sorted(kept, key=lambda f: (f.line, f.col))


def _allowances(text: str) -> dict[int, frozenset[str] | None]:
    """Line → the rules its ``# flux: allow`` comment accepts (None: all)."""
    allowed: dict[int, frozenset[str] | None] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.COMMENT and (match := _ALLOW.search(token.string)):
                rules = match[1]
                allowed[token.start[0]] = None if rules is None else frozenset(
                    r.strip() for r in rules.split(",") if r.strip())
    except (tokenize.TokenError, SyntaxError):
        pass  # ast accepted it; a tokenizer quirk only costs the comments after it
    return allowed


def _is_allowed(finding: Finding, end_line: int,
                allowed: dict[int, frozenset[str] | None]) -> bool:
    # The comment goes on the line the call starts on or, for a call spread over several
    # lines, the line it ends on.
    for line in {finding.line, end_line}:
        if line in allowed:
            rules = allowed[line]
            if rules is None or finding.rule in rules:
                return True
    return False


# -- name resolution ----------------------------------------------------------------------

_Function = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass
class _Scope:
    """Names bound in one scope: an import binds the dotted name it stands for; anything
    else (a parameter, an assignment, a def) binds None — it hides an outer name."""

    names: dict[str, str | None]
    is_class: bool = False
    assigned: list[tuple[str, ast.expr]] = field(default_factory=list)
    paths: set[str] = field(default_factory=set)


def _own_nodes(roots: Iterable[ast.AST]) -> Iterator[ast.AST]:
    """Every node evaluated in the scope whose body is ``roots``: a nested def, lambda or
    class contributes its name, decorators and defaults, not its body."""
    stack = list(roots)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            stack.extend(node.args.defaults)
            stack.extend(d for d in node.args.kw_defaults if d is not None)
            if not isinstance(node, ast.Lambda):
                stack.extend(node.decorator_list)
        elif isinstance(node, ast.ClassDef):
            stack.extend([*node.decorator_list, *node.bases, *node.keywords])
        else:
            stack.extend(ast.iter_child_nodes(node))


def _parameters(args: ast.arguments) -> list[str]:
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    every += [a for a in (args.vararg, args.kwarg) if a is not None]
    return [a.arg for a in every]


def _scope(body: Iterable[ast.AST], parameters: Iterable[str] = (), *,
           is_class: bool = False) -> _Scope:
    imports: dict[str, str | None] = {}
    hidden: set[str] = set(parameters)
    outer: set[str] = set()
    assigned: list[tuple[str, ast.expr]] = []
    for node in _own_nodes(body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    imports[alias.asname] = alias.name
                else:
                    head = alias.name.split(".")[0]
                    imports[head] = head
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if node.level or not node.module:  # relative: the project's own code
                    hidden.add(alias.asname or alias.name)
                elif alias.name == "*":
                    imports.update(_star(node.module))
                else:
                    imports[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            hidden.add(node.name)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            hidden.add(node.id)
        elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
            hidden.add(node.name)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            outer.update(node.names)
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name):
            assigned.append((node.targets[0].id, node.value))
        elif isinstance(node, ast.AnnAssign | ast.NamedExpr) and node.value is not None and \
                isinstance(node.target, ast.Name):
            assigned.append((node.target.id, node.value))
    # An import wins over another binding of the same name: ``try: import x`` / ``except
    # ImportError: x = None`` still means the module.
    names: dict[str, str | None] = {n: None for n in hidden - outer}
    names.update((n, q) for n, q in imports.items() if n not in outer)
    assigned.sort(key=lambda pair: (pair[1].lineno, pair[1].col_offset))
    return _Scope(names, is_class, assigned)


def _star(module: str) -> dict[str, str]:
    """``from random import *``: the names it binds, for the standard-library modules the
    rules know (importing those is harmless); nothing for any other module."""
    known = {pattern.split(".")[0] for pattern, _, _ in CALLS}
    if module not in known or module not in sys.stdlib_module_names:
        return {}
    try:
        imported = importlib.import_module(module)
    except ImportError:
        return {}
    public = getattr(imported, "__all__", None) or \
        [n for n in dir(imported) if not n.startswith("_")]
    return {name: f"{module}.{name}" for name in public}


class _Checker(ast.NodeVisitor):
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.chain: list[_Scope] = []
        self.found: list[tuple[Finding, int]] = []  # (finding, last line of its node)

    # -- scopes

    def visit_Module(self, node: ast.Module) -> None:
        self._enter(_scope(node.body), node.body)

    def visit_FunctionDef(self, node: _Function) -> None:
        for outer in [*node.decorator_list, *node.args.defaults,
                      *(d for d in node.args.kw_defaults if d is not None)]:
            self.visit(outer)
        self._enter(_scope(node.body, _parameters(node.args)), node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for outer in [*node.args.defaults, *(d for d in node.args.kw_defaults if d)]:
            self.visit(outer)
        self._enter(_scope([node.body], _parameters(node.args)), [node.body])

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for outer in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(outer)
        self._enter(_scope(node.body, is_class=True), node.body)

    def _enter(self, scope: _Scope, body: Sequence[ast.AST]) -> None:
        self.chain.append(scope)
        for name, value in scope.assigned:
            if self._is_path(value):
                scope.paths.add(name)
        for statement in body:
            self.visit(statement)
        self.chain.pop()

    def _binding(self, name: str) -> _Scope | None:
        """The scope whose binding of ``name`` is seen here (class bodies are invisible from
        the functions inside them, as in Python)."""
        for depth, scope in enumerate(reversed(self.chain)):
            if scope.is_class and depth > 0:
                continue
            if name in scope.names:
                return scope
        return None

    def qualname(self, node: ast.expr) -> str | None:
        """The dotted name an expression stands for (``dt.now`` → ``datetime.datetime.now``),
        or None when it is not a module's name."""
        if isinstance(node, ast.Name):
            scope = self._binding(node.id)
            if scope is not None:
                return scope.names[node.id]
            return "builtins.open" if node.id == "open" else None
        if isinstance(node, ast.Attribute):
            base = self.qualname(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def _is_path(self, node: ast.expr) -> bool:
        """Whether ``node`` is known to be a pathlib path."""
        if isinstance(node, ast.Call):
            if self.qualname(node.func) in PATH_FACTORIES:
                return True
            func = node.func
            return isinstance(func, ast.Attribute) and func.attr in PATH_RETURNING and \
                self._is_path(func.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            return self._is_path(node.left)
        if isinstance(node, ast.Attribute) and node.attr == "parent":
            return self._is_path(node.value)
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and \
                node.value.attr == "parents":
            return self._is_path(node.value.value)
        if isinstance(node, ast.Name):
            scope = self._binding(node.id)
            return scope is not None and node.id in scope.paths
        return False

    # -- findings

    def visit_Call(self, node: ast.Call) -> None:
        name = self.qualname(node.func)
        spelled = ast.unparse(node.func)
        rule = _call_rule(name, node) if name is not None else None
        func = node.func
        if rule is not None:
            self._add(node, rule[0], _called(spelled, name or spelled), rule[1])
        elif isinstance(func, ast.Attribute) and (
                func.attr in FILE_METHODS or
                (func.attr in PATH_FILE_METHODS and self._is_path(func.value))):
            self._add(node, "file", f"{_cut(spelled)}()", _FILE)
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if not self._read(node):
            self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        self._read(node)

    def _read(self, node: ast.Attribute | ast.Name) -> bool:
        name = self.qualname(node)
        if name in READS:
            rule, suggestion = READS[name]
            spelled = ast.unparse(node)
            shown = spelled if spelled == name else f"{spelled} ({name})"
            self._add(node, rule, shown, suggestion)
            return True
        return False

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._uncaptured(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if not node.level and node.module:
            self._uncaptured(node, node.module)

    def _uncaptured(self, node: ast.Import | ast.ImportFrom, module: str) -> None:
        top = module.split(".")[0]
        if top in UNCAPTURED:
            description, fix = UNCAPTURED[top]
            self._add(node, "uncaptured", f"import {module}: {description}", fix)

    def _add(self, node: ast.expr | ast.stmt, rule: str, what: str, suggestion: str) -> None:
        finding = Finding(self.filename, node.lineno, node.col_offset + 1, rule,
                          f"{what} {REASONS[rule]}", suggestion)
        self.found.append((finding, node.end_lineno or node.lineno))


def _call_rule(name: str, node: ast.Call) -> tuple[str, str] | None:
    """(rule, suggestion) for a call of ``name``, or None when it is fine."""
    if name in CLOCK_WITHOUT_ARGUMENT:
        given = len(node.args) + len(node.keywords)
        return ("time", _CLOCK) if given < CLOCK_WITHOUT_ARGUMENT[name] else None
    if name in ("random.Random", "numpy.random.default_rng", "numpy.random.RandomState") and \
            (node.args or node.keywords):
        return None  # a generator with an explicit seed replays by itself
    for pattern, rule, suggestion in CALLS:
        if fnmatchcase(name, pattern):
            return (rule, suggestion) if rule else None
    return None


def _called(spelled: str, name: str) -> str:
    shown = f"{_cut(spelled)}()"
    return shown if name in (spelled, f"builtins.{spelled}") else f"{shown} ({name})"


def _cut(text: str, width: int = 60) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]
