"""Recorded executions as tests: replay a record against today's code and assert the outcome.

The public face of Flux for test suites (``pip install flux-replay`` puts it, and the pytest
plugin, in a project's environment)::

    from flux.testing import assert_replays

    def test_checkout_keeps_working():
        assert_replays("records/checkout-01a2b3c4.json")          # a record file
        assert_replays("01a2b3c4-0012", project="path/to/app")    # an id in the store

A record is replayed as ``flux replay`` replays it: every outside value is served from its
tape, nothing is sent, nothing is kept. ``expect="same"`` asks that the replay reproduce the
original exactly (a failure the same way); ``expect="pass"`` that it succeed (a failure
that has been fixed). A record file may carry its own ``expect``; without one, ``same``.

With Flux installed, pytest also has:

- the fixture ``flux_runtime``: a :class:`ProjectRuntime` for the project around the test
  run (``--flux-project DIR`` to name another), with ``replay`` and ``assert_replays``;
- the option ``--flux-records DIR``: every record file under DIR (``flux record export
  --window … -o DIR``) is a test item named after its function and id.

This module stays small and imports the machinery only when it is used: the pytest plugin
loads it in every test run of an environment where Flux is installed.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flux._project import Project
    from flux.replay._testrun import ProjectRuntime, ReplayMismatch, ReplayResult, record_files

_EXPORTS = {
    "ProjectRuntime": "flux.replay._testrun",
    "ReplayMismatch": "flux.replay._testrun",
    "ReplayResult": "flux.replay._testrun",
    "record_files": "flux.replay._testrun",
}

__all__ = [
    "ProjectRuntime",
    "ReplayMismatch",
    "ReplayResult",
    "assert_replays",
    "record_files",
    "replay",
]


def replay(
    source: str | os.PathLike[str],
    *,
    project: str | os.PathLike[str] | Project | None = None,
    expect: str | None = None,
) -> ReplayResult:
    """Replay ``source`` — a record file (``flux record export``) or an execution id (or a
    unique prefix) in the project's store — against the project's code of today.

    ``project`` is the project's directory; by default the one around the record file, else
    around the current directory. ``expect`` is ``"same"`` or ``"pass"`` (default: the
    file's own ``expect``, else ``"same"``). Returns the :class:`ReplayResult`, whose
    ``passed`` says whether the replay did as expected; a record that cannot be replayed
    at all (no such id, a file that is not a record) raises ``flux.FluxError``."""
    from flux.replay._testrun import run  # the machinery loads when it is used

    return run(source, project=project, expect=expect)


def assert_replays(
    source: str | os.PathLike[str],
    *,
    project: str | os.PathLike[str] | Project | None = None,
    expect: str | None = None,
) -> ReplayResult:
    """:func:`replay`, then raise :class:`ReplayMismatch` (an ``AssertionError``) unless
    the replay did as expected; its message names the divergence and its file:line."""
    __tracebackhide__ = True  # pytest shows the mismatch, not this frame
    from flux.replay._testrun import ReplayMismatch, run  # loads when it is used

    result = run(source, project=project, expect=expect)
    if not result.passed:
        raise ReplayMismatch(result)
    return result


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flux.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
