"""``flux bug bisect``: the first commit at which a recorded request fails.

Each request's record is exported to a file once. Every commit tested is checked out into a
temporary git worktree and the request is replayed there by a fresh ``flux replay FILE
--json`` process: fresh, so that modules imported at one commit never leak into the next
and a commit that hangs or crashes the interpreter costs one verdict, not the bisect. The
replay is served from the tape, so nothing is sent and nothing is kept, whatever the
commit does.

A commit is **good** if every request replays as passing, **bad** if any still fails, and
**skip** (git bisect's word) if a replay could not run at all — the function does not exist
or does not load there — in which case a neighbour is tried instead. The search itself
(``search``) and the verdicts (``classify``, ``combine``) are pure and tested without git.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from psycopg.rows import dict_row

from flux._errors import FluxError
from flux._ids import short
from flux._project import Project, database_url_from_env
from flux.store._database import reader, resolve
from flux.store._portable import export_record
from flux.store._queries import load

GOOD, BAD, SKIP = "good", "bad", "skip"
REPLAY_TIMEOUT = 300.0  # seconds for one replay process; past it the commit is skipped


class BisectError(FluxError):
    code = "bisect"


@dataclass(frozen=True)
class Tested:
    """One commit tested, in the order tested."""

    sha: str
    verdict: str  # good | bad | skip
    subject: str
    reason: str | None = None  # why bad (the error) or skip (what could not run)


# -- pure logic ---------------------------------------------------------------------------

def classify(returncode: int, stdout: str, stderr: str) -> tuple[str, str | None]:
    """The verdict of one ``flux replay --json`` process, and the reason for it."""
    try:
        result = json.loads(stdout)
    except ValueError:
        result = None
    if not isinstance(result, dict) or "passed" not in result:
        # No replay result: the replay itself could not run at this commit.
        lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
        reason = lines[0].removeprefix("error:").strip() if lines else f"exit {returncode}"
        return SKIP, reason
    if returncode == 0 and result["passed"]:
        return GOOD, None
    replayed = result.get("replayed") or {}
    if replayed.get("status") == "error":
        error = replayed.get("error") or {}
        return BAD, f"{error.get('type')}: {error.get('message')}"
    return SKIP, "the replay neither passed nor failed"


def combine(verdicts: Sequence[str]) -> str:
    """A commit's verdict over several requests: bad if any fails, else skip if any could
    not run, else good."""
    if BAD in verdicts:
        return BAD
    return SKIP if SKIP in verdicts else GOOD


def search(count: int, test: Callable[[int], str]) -> tuple[int, list[int]]:
    """Binary search over ``count`` candidates, oldest first, whose last is known bad and
    whose parent of the first is known good. ``test(i)`` gives candidate i's verdict.

    Returns the index of the first bad candidate and, when skipped candidates before it
    leave the answer open, their indexes (the first bad may be any of them)."""
    good, bad = -1, count - 1
    skipped: set[int] = set()
    while True:
        open_ = [i for i in range(good + 1, bad) if i not in skipped]
        if not open_:
            return bad, [i for i in range(good + 1, bad)]
        middle = (good + bad) // 2
        pick = min(open_, key=lambda i: (abs(i - middle), i))  # skipped: its nearest neighbour
        verdict = test(pick)
        if verdict == GOOD:
            good = pick
        elif verdict == BAD:
            bad = pick
        else:
            skipped.add(pick)


# -- git ------------------------------------------------------------------------------------

class _Git:
    """The git repository around a project, driven through the ``git`` command."""

    def __init__(self, project_root: Path) -> None:
        top = self.run("rev-parse", "--show-toplevel", cwd=project_root, check=False)
        if top.returncode != 0:
            raise BisectError(f"{project_root} is not in a git repository: bisect needs the "
                              "project's history")
        self.top = Path(top.stdout.strip()).resolve()
        # The project may be a subdirectory of the repository: the same one in every worktree.
        self.subdir = project_root.resolve().relative_to(self.top)

    def run(self, *args: str, cwd: Path | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(["git", *args], cwd=cwd or self.top, capture_output=True,
                                  text=True, timeout=120)
        except FileNotFoundError as exc:
            raise BisectError("git is not installed: bisect needs it") from exc
        except subprocess.TimeoutExpired as exc:
            raise BisectError(f"git {args[0]} did not finish within 120 s") from exc
        if check and done.returncode != 0:
            message = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]
            raise BisectError(f"git {args[0]} failed: {message}")
        return done

    def commit(self, rev: str, unknown: str) -> str:
        """The full sha of ``rev``; ``unknown`` is the sentence to say if there is none."""
        done = self.run("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", check=False)
        if done.returncode != 0 or not done.stdout.strip():
            raise BisectError(unknown)
        return done.stdout.strip()

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.run("merge-base", "--is-ancestor", older, newer,
                        check=False).returncode == 0

    def candidates(self, good: str, bad: str) -> list[str]:
        """The commits after good up to bad that descend from good, oldest first."""
        done = self.run("rev-list", "--ancestry-path", "--reverse", f"{good}..{bad}")
        return done.stdout.split()

    def oldest_common(self, shas: list[str]) -> str:
        return self.run("merge-base", "--octopus", *shas).stdout.strip()

    def subject(self, sha: str) -> str:
        return self.run("show", "--no-patch", "--format=%s", sha).stdout.strip()

    def describe(self, sha: str) -> dict[str, Any]:
        lines = self.run("show", "--name-only", "--format=%s", sha).stdout.splitlines()
        return {"sha": sha, "subject": lines[0] if lines else "",
                "files": [line for line in lines[1:] if line.strip()]}

    @contextlib.contextmanager
    def worktree(self, sha: str) -> Iterator[Path]:
        """``sha`` checked out in a temporary worktree, removed afterwards whatever happens
        (an error, Ctrl-C)."""
        parent = Path(tempfile.mkdtemp(prefix="flux-bisect-"))
        tree = parent / sha[:12]
        try:
            self.run("worktree", "add", "--detach", str(tree), sha)
            yield tree
        finally:
            removed = subprocess.run(["git", "worktree", "remove", "--force", str(tree)],
                                     cwd=self.top, capture_output=True)
            shutil.rmtree(parent, ignore_errors=True)
            if removed.returncode != 0:  # never registered, or gone: drop the bookkeeping
                subprocess.run(["git", "worktree", "prune"], cwd=self.top, capture_output=True)


# -- the command ----------------------------------------------------------------------------

# A request as bisect holds it: its record file, its record, its function's last success.
Exported = tuple[Path, dict[str, Any], dict[str, Any] | None]


def _export(project: Project, request_ids: Sequence[str], folder: Path) -> list[Exported]:
    """Each request's record written to a file, with the last success of its function."""

    exported = []
    seen: set[str] = set()
    with reader(project) as conn:
        for prefix in request_ids:
            document = export_record(conn, prefix)
            record = document["record"]
            if record["request_id"] in seen:
                continue
            seen.add(record["request_id"])
            path = folder / f"{record['request_id']}.json"
            path.write_text(json.dumps(document), encoding="utf-8")
            with conn.cursor(row_factory=dict_row) as cur:
                last = cur.execute(load("inspect").last_good_code, {
                    "function": record["function"],
                    "before": dt.datetime.fromisoformat(record["started_at"]),
                }).fetchone()
            exported.append((path, record, last))
    return exported


def _default_good(git: _Git, exported: list[Exported]) -> str:
    """The commit each request's function last ran successfully at; with several, the
    oldest of them (their common ancestor), so that no request starts the search bad."""
    shas = []
    for _, record, last in exported:
        function, rid = record["function"], short(record["request_id"])
        if last is None:
            raise BisectError(f"no successful execution of {function} was recorded before "
                              f"{rid}, so there is no known good commit: pass --good REV")
        if not last["code_sha"]:
            raise BisectError(f"the last successful execution of {function} "
                              f"({short(last['request_id'])}) ran outside git: pass --good REV")
        if last["code_dirty"]:
            raise BisectError(
                f"the last successful execution of {function} ({short(last['request_id'])}) "
                f"ran uncommitted changes on top of {last['code_sha'][:12]}, so it names no "
                "good commit: pass --good REV")
        shas.append(git.commit(last["code_sha"], (
            f"the last successful execution of {function} ran commit {last['code_sha'][:12]}, "
            f"which is not in {git.top}: pass --good REV")))
    unique = list(dict.fromkeys(shas))
    return unique[0] if len(unique) == 1 else git.oldest_common(unique)


def _child_env(project: Project) -> dict[str, str]:
    """The replaying process's environment: ours, with the database made explicit. A
    worktree has no ``.flux/``, so without DATABASE_URL it would start a server of its own."""

    env = dict(os.environ)
    env["DATABASE_URL"] = database_url_from_env() or resolve(project, create=False).conninfo
    # The same Flux at every commit: this one, not a copy the checked-out tree may hold.
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


def _replay_at(project_dir: Path, record_file: Path, env: dict[str, str]
               ) -> tuple[str, str | None]:
    """Replay one record file with the code checked out in ``project_dir``."""
    if not (project_dir / "flux.toml").is_file():
        return SKIP, "the project does not exist at this commit"
    # -P: the checked-out directory goes nowhere on sys.path, so a ``cli`` or ``flux``
    # folder of the project cannot stand in for Flux itself.
    command = [sys.executable, "-P", "-m", "cli", "replay", str(record_file), "--json"]
    try:
        done = subprocess.run(command, cwd=project_dir, env=env, capture_output=True,
                              text=True, timeout=REPLAY_TIMEOUT)
    except subprocess.TimeoutExpired:
        return SKIP, f"the replay did not finish within {REPLAY_TIMEOUT:.0f} s"
    return classify(done.returncode, done.stdout, done.stderr)


def bisect(project: Project, request_ids: Sequence[str], *, good: str | None = None,
           bad: str | None = None,
           on_start: Callable[[dict[str, Any]], None] | None = None,
           on_tested: Callable[[Tested], None] | None = None) -> dict[str, Any]:
    """Find the first commit between ``good`` and ``bad`` at which any of the requests
    fails on replay. ``on_start`` hears the plan, ``on_tested`` each commit as it is done."""
    if not request_ids:
        raise BisectError("give at least one --request ID")
    git = _Git(project.root)
    with tempfile.TemporaryDirectory(prefix="flux-bisect-records-") as folder:
        exported = _export(project, request_ids, Path(folder))
        bad = bad or "HEAD"
        bad_sha = git.commit(bad, f"bad revision {bad!r} is not a commit of {git.top}")
        good_sha = (git.commit(good, f"good revision {good!r} is not a commit of {git.top}")
                    if good else _default_good(git, exported))
        if good_sha == bad_sha:
            raise BisectError(f"good and bad are the same commit ({good_sha[:12]}): "
                              "nothing to bisect")
        if not git.is_ancestor(good_sha, bad_sha):
            raise BisectError(f"good {good_sha[:12]} is not an ancestor of bad "
                              f"{bad_sha[:12]}: bisect needs good before bad in one history")
        candidates = git.candidates(good_sha, bad_sha)
        env = _child_env(project)
        tested: list[Tested] = []

        def test(index: int) -> str:
            sha = candidates[index]
            verdicts, reasons = [], []
            with git.worktree(sha) as tree:
                for path, _, _ in exported:
                    verdict, reason = _replay_at(tree / git.subdir, path, env)
                    verdicts.append(verdict)
                    reasons.append(reason)
                    if verdict == BAD:
                        break  # bad if any fails: the others cannot change that
            verdict = combine(verdicts)
            reason = next((r for v, r in zip(verdicts, reasons, strict=True) if v == verdict),
                          None)
            step = Tested(sha, verdict, git.subject(sha), reason)
            tested.append(step)
            if on_tested:
                on_tested(step)
            return verdict

        if on_start:
            on_start({"good": good_sha, "bad": bad_sha, "candidates": len(candidates),
                      "requests": [r["request_id"] for _, r, _ in exported],
                      "steps": 1 + (len(candidates) - 1).bit_length()})
        # bad is checked first: a request that passes there has nothing to bisect, and the
        # search would otherwise blame bad itself.
        if test(len(candidates) - 1) == GOOD:
            raise BisectError(f"the request(s) replay as passing at bad {bad_sha[:12]}: "
                              "there is no failure to bisect")
        if tested[-1].verdict == SKIP:
            raise BisectError(f"the request(s) cannot be replayed at bad {bad_sha[:12]}: "
                              f"{tested[-1].reason}")
        first, undecided = search(len(candidates), test)
    return {
        "requests": [r["request_id"] for _, r, _ in exported],
        "good": good_sha,
        "bad": bad_sha,
        "candidates": len(candidates),
        "first_bad": git.describe(candidates[first]),
        "undecided": [candidates[i] for i in undecided],
        "tested": [asdict(t) for t in tested],
    }
