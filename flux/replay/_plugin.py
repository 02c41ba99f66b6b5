"""Flux's pytest plugin, registered through the ``pytest11`` entry point (``flux``).

- ``--flux-records DIR`` (repeatable): every record file under DIR becomes a test item
  named after its function and short id, ``checkout[01a2b3c4-0012]``, which replays the
  record against the project's code of today and passes when the replay does what the
  record expects (``same`` unless the file says ``"expect": "pass"``; see
  flux/_testrun.py). A failing item prints the divergence and its file:line.
- ``--flux-project DIR``: the project whose code replays (default: the one around each
  record file, else around the current directory).
- The fixture ``flux_runtime``: a ``flux.testing.ProjectRuntime`` of that project.

pytest loads this module in every test run of an environment where Flux is installed,
Flux's own included, so it imports nothing of Flux until a record or the fixture is used.
The records' directory is added to what pytest collects, so ``pytest --flux-records
records/`` works whatever the project's ``testpaths`` say; a file is collected once even
when pytest's own walk reaches it too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from flux.replay._testrun import ProjectRuntime

_RECORDS = pytest.StashKey[list[Path]]()
_SEEN = pytest.StashKey[set[Path]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flux", "Flux: recorded executions as tests")
    group.addoption(
        "--flux-records",
        action="append",
        default=[],
        metavar="DIR",
        help="Replay every record file under DIR (flux record export -o DIR) "
        "as a test item against today's code.",
    )
    group.addoption(
        "--flux-project",
        default=None,
        metavar="DIR",
        help="The Flux project whose code replays the records (default: the "
        "one around each record, else around the current directory).",
    )


def pytest_configure(config: pytest.Config) -> None:
    directories = [Path(d).absolute() for d in config.getoption("flux_records") or []]
    for directory in directories:
        if not directory.is_dir():
            raise pytest.UsageError(f"--flux-records {directory}: not a directory")
    config.stash[_RECORDS] = directories
    config.stash[_SEEN] = set()
    known = {Path(a).absolute() for a in config.args}
    # Collected whatever testpaths say; pytest's own walk may reach them too: seen once.
    config.args.extend(str(d) for d in directories if d not in known)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> RecordFile | None:
    directories = parent.config.stash.get(_RECORDS, [])
    if file_path.suffix != ".json" or not _under(file_path, directories):
        return None
    seen = parent.config.stash[_SEEN]
    if file_path in seen:
        return None
    seen.add(file_path)
    return RecordFile.from_parent(parent, path=file_path)


def _under(path: Path, directories: Iterable[Path]) -> bool:
    return any(path.is_relative_to(d) for d in directories)


class RecordFile(pytest.File):
    """A record file: one test item, named after the function and the short id."""

    def collect(self) -> Iterable[pytest.Item]:
        # Only the name is read here; anything wrong with the file is the item's failure,
        # said in one sentence when it runs, not a collection error.
        name = self.path.stem
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))["record"]
            from flux._ids import short  # Flux loads when a record is collected, not before

            name = f"{record['function']}[{short(str(record['request_id']))}]"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        yield RecordItem.from_parent(self, name=name)


class RecordItem(pytest.Item):
    """The replay of one record file, judged by what the record expects."""

    def runtest(self) -> None:
        # Flux loads when a record runs: pytest imports this plugin in every run.
        from flux.replay._testrun import ReplayMismatch, run

        result = run(self.path, project=self.config.getoption("flux_project"))
        if not result.passed:
            raise ReplayMismatch(result)

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None
    ) -> str | Any:
        # Loaded already by runtest; imported here, not at the top, for the reason above.
        from flux._errors import FluxError
        from flux.replay._testrun import ReplayMismatch

        if isinstance(excinfo.value, ReplayMismatch):
            return str(excinfo.value)
        if isinstance(excinfo.value, FluxError):  # not replayable: one sentence
            return f"{self.path}: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"replay of {self.name} ({self.path.name})"


@pytest.fixture
def flux_runtime(request: pytest.FixtureRequest) -> ProjectRuntime:
    """The Flux project around the test run (``--flux-project DIR`` names another), to
    replay records against its code: ``flux_runtime.assert_replays("records/x.json")``."""
    from flux.replay._testrun import ProjectRuntime, project_of  # only when a test asks

    given = request.config.getoption("flux_project")
    return ProjectRuntime(project_of(given, near=Path(str(request.config.rootpath))))
