"""``flux test generate``: a recorded execution turned into a pytest regression test.

The test replays the record against the code of the day, as ``flux replay FILE`` does, and
asserts the outcome: a success must be reproduced exactly (``--expect same``); a failure
must now pass, so the test is red until the bug is fixed and guards the fix afterwards
(``expect_same`` pins the failure instead). The record is written next to the test as a
``flux record export`` file; the header of the generated test says why.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any

from flux._errors import ConfigError
from flux._ids import short
from flux._project import Project
from flux.replay._incident import select
from flux.store._database import reader
from flux.store._portable import export_record


def generate(project: Project, prefix: str, *, output: Path | None = None,
             expect_same: bool = False, force: bool = False) -> dict[str, Any]:
    """Write the test of execution ``prefix`` (default ``tests/test_replay_<short id>.py``
    under the project) and its record beside it. Refuses to overwrite unless ``force``."""
    with reader(project) as conn:
        document = export_record(conn, prefix)
    record = document["record"]
    sid = short(record["request_id"]).replace("-", "_")  # a module name takes no dashes
    test_file = (output or project.root / "tests" / f"test_replay_{sid}.py").absolute()
    if test_file.suffix != ".py":
        raise ConfigError(f"{test_file} is not a .py file: pytest would not collect it")
    record_file = test_file.with_suffix(".json")
    for path in (test_file, record_file):
        if path.exists() and not force:
            raise ConfigError(f"{path} exists already", hint="pass --force to replace it")
    same = expect_same or record["status"] == "ok"
    document["expect"] = "same" if same else "pass"  # what --flux-records asks of it too
    test_file.parent.mkdir(parents=True, exist_ok=True)
    record_file.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n",
                           encoding="utf-8")
    test_file.write_text(render(record, record_file.name,
                                os.path.relpath(project.root.resolve(),
                                                test_file.parent.resolve()),
                                expect_same=same), encoding="utf-8")
    return {"request_id": record["request_id"], "function": record["function"],
            "original_status": record["status"], "expect": "same" if same else "pass",
            "file": str(test_file), "record_file": str(record_file)}


def export_records(project: Project, directory: Path, *, window: str | None = None,
                   function: str | None = None, status: str | None = None,
                   expect: str | None = None) -> dict[str, Any]:
    """``flux record export --window/--function/--status -o DIR``: one record file per
    matching execution (originals with a tape: no replays, no sampled-out outlines), named
    ``<short id>-<function>.json``, as the store holds them — what was redacted there is
    redacted in the files. ``pytest --flux-records DIR`` turns each into a test item;
    ``expect`` (``pass``: failures that have been fixed) is written into every file."""
    if expect not in (None, "same", "pass"):
        raise ConfigError(f"--expect takes same or pass, not {expect!r}")
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is a file; -o takes a directory for a selection")
    written: list[dict[str, Any]] = []
    with reader(project) as conn:
        ids = select(conn, window=window, function=function, status=status, scoped=False)
        directory.mkdir(parents=True, exist_ok=True)
        for request_id in ids:
            document = export_record(conn, request_id)
            if expect is not None:
                document["expect"] = expect
            record = document["record"]
            name = re.sub(r"[^\w.-]", "_", record["function"] or "unknown")
            path = directory / f"{short(request_id)}-{name}.json"  # in time order
            path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n",
                            encoding="utf-8")
            written.append({"request_id": request_id, "function": record["function"],
                            "status": record["status"], "http_status": record["http_status"],
                            "file": str(path)})
    return {"directory": str(directory), "exported": len(written), "records": written}


def render(record: dict[str, Any], record_name: str, project_dir: str, *,
           expect_same: bool) -> str:
    """The text of the generated test module."""
    rid, sid = record["request_id"], short(record["request_id"])
    function = record["function"] or "unknown"
    when = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    what = f"{record.get('method') or record['kind']} /{record.get('route') or ''}"
    sha = (record.get("code_sha") or "unknown")[:12] + (
        " (dirty)" if record.get("code_dirty") else "")
    failed = record["status"] != "ok"
    if failed:
        error = record.get("error") or {}
        outcome = (f"failed ({record.get('http_status')}) with {error.get('type')}: "
                   f"{_first_line(error.get('message'))}")
    else:
        outcome = f"succeeded ({record.get('http_status')})"
    if not expect_same:
        asserts = ("asserts that the replay now PASSES: the test fails until the bug is "
                   "fixed, then keeps it fixed. To pin the failure instead, generate it with "
                   f"`flux test generate {sid} --expect same`.")
        name = "passes_after_the_fix"
    elif failed:
        asserts = ("asserts that the replay FAILS THE SAME WAY (same error type and code): "
                   "the failure is pinned (`--expect same`).")
        name = "fails_the_same_way"
    else:
        asserts = ("asserts that the replay REPRODUCES IT, same status and same output "
                   "(`--expect same`): a change to what this request returns fails it.")
        name = "is_reproduced"
    docstring = "\n\n".join(_fill(p) for p in (
        f"Execution {sid} of {function} ({what}) {outcome}.",
        "This test replays that request against today's code, every outside value served "
        f"from its tape (nothing is sent, nothing is kept), and {asserts}")) + "\n"
    header = "\n#\n".join(_fill(p, prefix="# ") for p in (
        f"Generated by `flux test generate {sid}` on {when}, from execution {rid} "
        f"({function}, {what}), recorded {record.get('started_at')} at commit {sha}. "
        "Regenerate it rather than edit it.",
        f"The record is kept beside this file, in {record_name} (the format of `flux record "
        "export`), rather than inside it: a tape can be large, it stays readable and "
        f"diffable as JSON, and `flux replay {record_name}` or `flux record import` take it "
        "as it is."))
    test_name = re.sub(r"\W", "_", f"test_{function}_{sid.replace('-', '_')}_{name}")
    return _TEMPLATE.format(
        header=header, docstring=_docstring_safe(docstring),
        record_literal=json.dumps(record_name), project_literal=json.dumps(project_dir),
        expect_literal=json.dumps("same" if expect_same else "pass"), test_name=test_name)


_TEMPLATE = '''\
{header}
"""{docstring}"""

from __future__ import annotations

from pathlib import Path

from flux.testing import assert_replays

HERE = Path(__file__).resolve().parent
RECORD = HERE / {record_literal}
PROJECT = (HERE / {project_literal}).resolve()


def {test_name}() -> None:
    assert_replays(RECORD, project=PROJECT, expect={expect_literal})
'''


def _fill(paragraph: str, prefix: str = "") -> str:
    return textwrap.fill(paragraph, 88, initial_indent=prefix, subsequent_indent=prefix,
                         break_on_hyphens=False, break_long_words=False)


def _first_line(text: Any) -> str:
    line = (str(text or "").strip().splitlines() or [""])[0]
    return line if len(line) <= 100 else line[:99] + "…"


def _docstring_safe(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
