"""Recorded executions as tests: what ``flux.testing``, Flux's pytest plugin and the tests
``flux test generate`` writes all run.

A record — an id in a project's store, or a file made by ``flux record export`` — is
replayed against the code of the day as ``flux replay`` does (every outside value served
from its tape; nothing is sent, nothing is kept) and judged by what it is expected to do:

- ``same``: the replay reproduces the original exactly (``flux replay --expect same``):
  same status and output, or the same error type and code for a failure. A record of
  working traffic guards what the code returns; a record of a failure pins it.
- ``pass``: the replay succeeds. A record of a failure that has been fixed guards the fix.

A record file says which in its top-level ``expect`` key (``flux record export --expect
pass`` writes it); without one it is ``same``. When a replay does not do what was expected,
:meth:`ReplayResult.explain` says how, naming the divergence (the first call the tape could
not answer, and its file:line) or the error of the replay and where it was raised.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flux._errors import ConfigError, DatabaseError
from flux._ids import short
from flux._project import Project, database_url_from_env, find_root, parse
from flux.replay._replay import ReplayError, replay, replay_command
from flux.runtime._runtime import Runtime
from flux.store._portable import read_file

EXPECTS = ("same", "pass")
PathLike = str | os.PathLike[str]


class ReplayMismatch(AssertionError):
    """A replayed record did not do what it was expected to; the message says how."""

    def __init__(self, result: ReplayResult) -> None:
        super().__init__(result.explain())
        self.result = result


@dataclass(frozen=True)
class ReplayResult:
    """One record replayed against today's code, and whether it did what was expected."""

    request_id: str
    function: str | None
    expect: str  # same | pass
    passed: bool
    original: dict[str, Any]  # {status, output, error}: as `flux replay --json` says
    replayed: dict[str, Any]
    divergence: dict[str, Any] | None  # {expected, actual, file, line, reason}
    beyond_tape: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""  # the record file, or the id, that was replayed
    http_status: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, result: dict[str, Any], *, expect: str, source: str) -> ReplayResult:
        return cls(
            request_id=result["request_id"],
            function=result.get("function"),
            expect=expect,
            passed=bool(result["passed"]),
            original=result["original"],
            replayed=result["replayed"],
            divergence=result.get("divergence"),
            beyond_tape=list(result.get("beyond_tape") or []),
            source=source,
            http_status=dict(result.get("http_status") or {}),
        )

    def explain(self) -> str:
        """What happened, for a person reading a failed test: the verdict, the divergence
        and its file:line, both outcomes, the calls that went past the tape."""
        name = f"{self.function or 'unknown'} {short(self.request_id)}"
        wanted = (
            "reproduce the original (expect same)"
            if self.expect == "same"
            else "pass (expect pass: the failure was fixed)"
        )
        verdict = "did" if self.passed else "did NOT"
        lines = [f"replay of {name} {verdict} {wanted}"]
        d = self.divergence
        if d:
            expected = _call_of(d.get("expected"), "nothing: the tape had ended")
            actual = (d.get("actual") or {}).get("call") or "nothing: the call was not made"
            lines.append(f"  diverged at {d.get('file')}:{d.get('line')}: {d.get('reason')}")
            lines.append(f"    expected  {_cut(expected)}")
            lines.append(f"    actual    {_cut(actual)}")
        lines.append(f"  original  {_outcome(self.original, self.http_status.get('original'))}")
        lines.append(f"  replayed  {_outcome(self.replayed, self.http_status.get('replayed'))}")
        for call in self.beyond_tape:
            lines.append(
                f"  beyond the tape: {_cut(str(call.get('call')))} at "
                f"{call.get('file')}:{call.get('line')} ({call.get('handled')})"
            )
        if self.source:
            lines.append(f"  record    {self.source}")
        return "\n".join(lines)


def _call_of(entry: dict[str, Any] | None, otherwise: str) -> str:
    if not entry:
        return otherwise
    where = f" (recorded at {entry['file']}:{entry['line']})" if entry.get("file") else ""
    return f"{entry.get('kind')} {entry.get('key')}{where}"


def _outcome(facts: dict[str, Any], http: Any) -> str:
    if facts.get("status") == "ok":
        output = json.dumps(facts.get("output"), ensure_ascii=False, default=str)
        return f"ok {http or ''} {_cut(output)}".replace("  ", " ")
    error = facts.get("error") or {}
    where = f" at {error['file']}:{error['line']}" if error.get("file") else ""
    return (
        f"{facts.get('status')} {http or ''} {error.get('type')}: "
        f"{_cut(str(error.get('message')))}{where}".replace("  ", " ")
    )


def _cut(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- replaying ------------------------------------------------------------------------------


def is_record_file(source: PathLike) -> bool:
    """Whether ``source`` names a record file rather than an execution id."""
    path = Path(source)
    return path.suffix == ".json" or path.is_file()


def expectation_of(document: dict[str, Any], path: Path) -> str:
    """What a record file asks of its replay: its ``expect`` key, ``same`` without one."""
    expect = document.get("expect", "same")
    if expect not in EXPECTS:
        raise ConfigError(
            f"{path}: expect is {expect!r}; a record expects one of {', '.join(EXPECTS)}"
        )
    return str(expect)


def project_of(project: PathLike | Project | None, near: Path | None = None) -> Project:
    """The project whose code replays: the one given, else the one around ``near`` (a
    record file's directory), else the one around the current directory."""
    if isinstance(project, Project):
        return project
    if project is not None:
        root = Path(project)
        if not (root / "flux.toml").is_file():
            raise ConfigError(f"{root} is not a Flux project (no flux.toml there)")
        return parse(root)
    for start in (near, Path.cwd()):
        if start is not None and (found := find_root(start)) is not None:
            return parse(found)
    raise ConfigError(
        "no Flux project here (no flux.toml in this directory or above)",
        hint="pass the project's directory",
    )


def run(
    source: PathLike, *, project: PathLike | Project | None = None, expect: str | None = None
) -> ReplayResult:
    """Replay ``source`` — a record file, or an execution id (or unique prefix) in the
    project's store — against the project's code of today, and judge it by ``expect``
    (the file's own ``expect`` key, else ``same``)."""
    if expect is not None and expect not in EXPECTS:
        raise ConfigError(f"expect takes one of {', '.join(EXPECTS)}, not {expect!r}")
    if is_record_file(source):
        path = Path(source).absolute()
        document = read_file(path)
        wanted = expect or expectation_of(document, path)
        where = project_of(project, near=path.parent)
        result = _replay_file(where, path, document["record"], expect_same=wanted == "same")
        return ReplayResult.of(result, expect=wanted, source=str(path))
    wanted = expect or "same"
    result = replay_command(project_of(project), str(source), expect_same=wanted == "same")
    return ReplayResult.of(result, expect=wanted, source=str(source))


class _WithoutDatabase(Runtime):
    """A runtime with no database behind it: enough for a replay served wholly from its
    tape. The first statement past the tape only notes that a database was needed."""

    needed_database = False

    async def ensure_pool(self) -> Any:
        self.needed_database = True
        raise DatabaseError("this replay needs a database")


def _replay_file(
    project: Project, path: Path, record: dict[str, Any], *, expect_same: bool
) -> dict[str, Any]:
    """``flux replay FILE``, with no server to run when the tape is enough.

    Without DATABASE_URL the replay first runs with no database at all, which is enough
    when the tape serves every call; only if the code went past its tape (a fixed function
    often does, and its statements run in a rolled-back transaction) does it run again
    against the project's database, started as ``flux replay`` would start it. Replays
    send and keep nothing, so running one twice is harmless."""
    if database_url_from_env() is None:
        result = asyncio.run(_replay_without_database(project, record, expect_same))
        if result is not None:
            return result
    return replay_command(project, str(path), expect_same=expect_same)


async def _replay_without_database(
    project: Project, record: dict[str, Any], expect_same: bool
) -> dict[str, Any] | None:
    runtime = _WithoutDatabase(project, "", pool_size=1)
    errors = await runtime.start(open_pool=False)
    try:
        broken = {e.file.stem: e.message for e in errors}
        if record.get("function") in broken:
            raise ReplayError(f"{record['function']} does not load: {broken[record['function']]}")
        result = await replay(runtime, record, expect_same=expect_same)
    finally:
        await runtime.close()
    return None if runtime.needed_database else result


def replay_recorded(record_file: Path, project_root: Path, *, expect_same: bool) -> dict[str, Any]:
    """The call of tests generated before ``flux.testing`` existed (they import it from
    ``flux._testgen``): the replay's ``flux replay --json`` document."""
    path = Path(record_file)
    return _replay_file(
        parse(Path(project_root)), path, read_file(path)["record"], expect_same=expect_same
    )


# -- the pytest fixture's object --------------------------------------------------------------


class ProjectRuntime:
    """A Flux project as a test sees it (the ``flux_runtime`` fixture): its code, replayed
    against records of its own store or record files."""

    def __init__(self, project: Project) -> None:
        self.project = project

    @property
    def root(self) -> Path:
        return self.project.root

    def replay(self, source: PathLike, *, expect: str | None = None) -> ReplayResult:
        """Replay a record (file or id) against this project's code; never raises on a
        mismatch (see :meth:`assert_replays`)."""
        return run(source, project=self.project, expect=expect)

    def assert_replays(self, source: PathLike, *, expect: str | None = None) -> ReplayResult:
        """Replay a record and raise :class:`ReplayMismatch` unless it did as expected."""
        result = self.replay(source, expect=expect)
        if not result.passed:
            raise ReplayMismatch(result)
        return result

    def records(self, directory: PathLike) -> list[Path]:
        """The record files in ``directory`` (and below), in name order."""
        return record_files(Path(directory))

    def __repr__(self) -> str:
        return f"ProjectRuntime({str(self.root)!r})"


def record_files(directory: Path) -> list[Path]:
    """Every ``.json`` file under ``directory``, in path order (each one is a record)."""
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory of records")
    return sorted(p for p in directory.rglob("*.json") if p.is_file())
