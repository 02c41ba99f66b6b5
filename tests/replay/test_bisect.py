"""`flux bug bisect` on a git history of the example shop: it replays a failed request at
commits in temporary worktrees and names the commit that broke it, in log2(n) replays."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from flux.replay._bisect import BAD, GOOD, SKIP, classify, combine, search
from tests.fixtures.projects import run_flux
from tests.fixtures.shop import SECRET, FakeProvider, copy_project, serve_app

CHECKOUT = "functions/checkout.py"
WORKS = 'charge_status = charge["status"]'
BROKEN = 'charge_status = charge["state"]'  # a KeyError on every provider answer
GIT_ENV = {"GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
           "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.com"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True, env={**os.environ, **GIT_ENV}).stdout.strip()


def history(parent: Path, payments_url: str, commits: int, bug_at: int
            ) -> tuple[Path, Path, list[str]]:
    """A repository holding the shop in ``shop/`` and ``commits`` commits, oldest first;
    the one at ``bug_at`` breaks checkout, every other one only touches notes.txt."""
    repo = parent / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    project = copy_project(repo / "shop", payments_url)
    (repo / ".gitignore").write_text(".flux/\n__pycache__/\n")
    (repo / "notes.txt").write_text("notes\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "shop: the example app")
    shas = [git(repo, "rev-parse", "HEAD")]
    for i in range(1, commits):
        if i == bug_at:
            code = (project / CHECKOUT).read_text()
            assert WORKS in code
            (project / CHECKOUT).write_text(code.replace(WORKS, BROKEN))
            message = "checkout: read the charge state"
        else:
            with (repo / "notes.txt").open("a") as notes:
                notes.write(f"entry {i}\n")
            message = f"notes: entry {i}"
        git(repo, "commit", "-q", "-a", "-m", message)
        shas.append(git(repo, "rev-parse", "HEAD"))
    return repo, project, shas


async def checkout(project: Path, db: str, provider: FakeProvider, email: str
                   ) -> tuple[int, str]:
    """Serve the project as it is on disk and make one checkout; (status, request id)."""
    async with serve_app(project, db, provider) as shop:
        _, user, _ = await shop.post("signup", {"email": email})
        status, _, rid = await shop.post("checkout",
                                         {"user_id": user["id"], "amount_cents": 900})
    return status, rid


def bisect(project: Path, db: str, *args: str) -> dict:
    result = run_flux(["bug", "bisect", *args, "--json"], project,
                      env={"DATABASE_URL": db, **GIT_ENV})
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def seed() -> int:
    value = random.SystemRandom().randrange(1_000_000)
    print(f"bisect test seed: {value}")  # shown on failure; set it below to replay a run
    return value


async def test_bisect_names_the_commit_that_broke_checkout(
        db: str, provider: FakeProvider, tmp_path: Path, seed: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_PAYMENTS_API_KEY", SECRET)
    bug_at = random.Random(seed).randrange(1, 64)
    repo, project, shas = history(tmp_path, provider.url, 64, bug_at)
    status, rid = await checkout(project, db, provider, "b@example.com")
    assert status == 500, f"seed {seed}"

    result = bisect(project, db, "--request", rid[:18], "--good", shas[0][:10])
    assert result["first_bad"]["sha"] == shas[bug_at], f"seed {seed}: {result}"
    assert result["first_bad"]["subject"] == "checkout: read the charge state"
    assert f"shop/{CHECKOUT}" in result["first_bad"]["files"]
    assert result["undecided"] == []
    assert 1 <= len(result["tested"]) <= 7, f"seed {seed}: {result['tested']}"
    for step in result["tested"]:
        index = shas.index(step["sha"])
        assert step["verdict"] == (BAD if index >= bug_at else GOOD), f"seed {seed}: {step}"
    assert len(git(repo, "worktree", "list").splitlines()) == 1  # every one removed

    unknown = run_flux(["bug", "bisect", "--request", rid[:18], "--good", "no-such-rev"],
                       project, env={"DATABASE_URL": db})
    assert unknown.returncode == 1
    assert "good revision 'no-such-rev' is not a commit of" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    backwards = run_flux(["bug", "bisect", "--request", rid[:18], "--good", shas[-1],
                          "--bad", shas[0]], project, env={"DATABASE_URL": db})
    assert "is not an ancestor of bad" in backwards.stderr
    # checkout never succeeded here: no default good commit, and the user is told what to pass
    nothing_good = run_flux(["bug", "bisect", "--request", rid[:18], "--json"], project,
                            env={"DATABASE_URL": db})
    assert nothing_good.returncode == 1 and nothing_good.stdout == ""
    said = [line for line in nothing_good.stderr.splitlines() if line.strip()]
    assert said == [f"error: no successful execution of checkout was recorded before "
                    f"{rid[:18]}, so there is no known good commit: pass --good REV"], said


async def test_bisect_starts_from_the_last_successful_execution(
        db: str, provider: FakeProvider, tmp_path: Path, seed: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_PAYMENTS_API_KEY", SECRET)
    bug_at = random.Random(seed).randrange(3, 16)
    repo, project, shas = history(tmp_path, provider.url, 16, bug_at)
    git(repo, "checkout", "-q", shas[1])  # the code as it ran in production, back then
    status, _ = await checkout(project, db, provider, "early@example.com")
    assert status == 200
    git(repo, "checkout", "-q", "main")
    status, rid = await checkout(project, db, provider, "late@example.com")
    assert status == 500

    result = bisect(project, db, "--request", rid[:18])
    assert result["good"] == shas[1], f"seed {seed}"
    assert result["first_bad"]["sha"] == shas[bug_at], f"seed {seed}: {result}"
    assert shas[0] not in [step["sha"] for step in result["tested"]]
    assert len(result["tested"]) <= 5, f"seed {seed}: {result['tested']}"


def test_errors_are_one_sentence(make_project) -> None:
    project = make_project()
    outside = run_flux(["bug", "bisect", "--request", "0190"], project)
    assert outside.returncode == 1
    assert "is not in a git repository" in outside.stderr
    assert "Traceback" not in outside.stderr


def test_search_skips_to_a_neighbour_and_says_when_the_answer_is_open() -> None:
    def run(verdicts: list[str]) -> tuple[int, list[int], list[int]]:
        asked: list[int] = []

        def test(i: int) -> str:
            asked.append(i)
            return verdicts[i]

        first, undecided = search(len(verdicts), test)
        return first, undecided, asked

    line = [GOOD] * 40 + [BAD] * 24
    first, undecided, asked = run(line)
    assert first == 40 and undecided == [] and len(asked) <= 6
    skipping = [GOOD] * 10 + [SKIP] * 5 + [BAD] * 17
    first, undecided, asked = run(skipping)
    assert first == 15 and undecided == [10, 11, 12, 13, 14]  # any of them may be it
    assert len(set(asked)) == len(asked)
    open_end = [GOOD] * 10 + [SKIP] * 3 + [BAD] * 3
    first, undecided, _ = run(open_end)
    assert first == 13 and undecided == [10, 11, 12]


def test_verdicts() -> None:
    passed = json.dumps({"passed": True, "replayed": {"status": "ok"}})
    original = {"status": "error", "error": {"type": "KeyError", "message": "'state'"}}
    failed = json.dumps({"passed": False, "original": original, "replayed": {
        "status": "error", "error": {"type": "KeyError", "message": "'state'"}}})
    assert classify(0, passed, "") == (GOOD, None)
    assert classify(1, failed, "") == (BAD, "KeyError: 'state'")
    # Failing another way says nothing about this bug: skip, as git bisect would.
    other = json.dumps({"passed": False, "original": original, "replayed": {
        "status": "error", "error": {"type": "TypeError", "message": "bad operand"}}})
    assert classify(1, other, "") == (
        SKIP, "fails another way: TypeError: bad operand (the original failed with KeyError)")
    # Departing from the tape before the original failure point: skip, with the reason.
    diverged = json.dumps({"passed": False, "original": original,
                           "replayed": original, "diverged_before_failure": True,
                           "divergence": {"file": "functions/checkout.py", "line": 9,
                                          "reason": "a call was added or changed"}})
    verdict, reason = classify(1, diverged, "")
    assert verdict == SKIP and "functions/checkout.py:9: a call was added" in str(reason)
    assert classify(1, "", "error: no function named 'checkout' in /x\n") == (
        SKIP, "no function named 'checkout' in /x")
    assert combine([GOOD, SKIP, BAD]) == BAD and combine([GOOD, SKIP]) == SKIP
    assert combine([GOOD, GOOD]) == GOOD
