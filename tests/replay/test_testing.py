"""Recorded executions as pytest tests: `flux record export --window … -o records/` writes a
directory of the shop's records, `pytest --flux-records records/` makes one item of each
that passes on today's code and fails — naming the divergence and its file:line — once a
change breaks one; `flux.testing` replays by id or file; generated tests import nothing
else of Flux, and tests generated before `flux.testing` existed still pass."""

from __future__ import annotations

import ast
import asyncio
import json
import re
import sys
from pathlib import Path

import pytest

import flux.testing
from flux._ids import short
from tests.fixtures.projects import run_flux
from tests.fixtures.shop import SECRET, Shop
from tests.replay.test_replay import CHECKOUT, edit, reshaped_checkout
from tests.replay.test_testgen import pytest_in


async def shop_traffic(shop: Shop) -> dict[str, str]:
    """Four executions of the shop: two that worked, two failures of different kinds."""
    _, user, signup = await shop.post("signup", {"email": "ada@example.com"})
    status, _, checkout = await shop.post("checkout", {"user_id": user["id"], "amount_cents": 900})
    assert status == 200
    status, _, duplicate = await shop.post("signup", {"email": "ada@example.com"})
    assert status == 500
    shop.provider.mode = "shape_change"
    status, _, reshaped = await shop.post("checkout", {"user_id": user["id"], "amount_cents": 500})
    assert status == 500
    shop.provider.mode = "ok"
    return {"signup": signup, "checkout": checkout, "duplicate": duplicate, "reshaped": reshaped}


def export(shop: Shop, *args: str) -> dict:
    done = run_flux(["record", "export", *args, "--json"], shop.root, env={"DATABASE_URL": shop.db})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def item_names(output: str) -> set[str]:
    return set(re.findall(r"^\S+\.json::(\S+)$", output, re.MULTILINE))


async def test_exported_records_are_test_items_that_fail_at_the_divergence(shop: Shop) -> None:
    ids = await shop_traffic(shop)
    exported = export(shop, "--window", "1h..now", "-o", "records")
    assert exported["exported"] == 4
    files = sorted((shop.root / "records").glob("*.json"))
    assert {f.name for f in files} == {
        f"{short(ids[k])}-{fn}.json"
        for k, fn in (
            ("signup", "signup"),
            ("checkout", "checkout"),
            ("duplicate", "signup"),
            ("reshaped", "checkout"),
        )
    }
    for f in files:  # redacted as the store is: the provider's key is in no file
        assert SECRET not in f.read_text()

    collected = pytest_in(shop.root, "--flux-records", "records", "--collect-only")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert item_names(collected.stdout) == {
        f"signup[{short(ids['signup'])}]",
        f"checkout[{short(ids['checkout'])}]",
        f"signup[{short(ids['duplicate'])}]",
        f"checkout[{short(ids['reshaped'])}]",
    }

    # Today's code: each replay matches its record (the failures fail the same way). No
    # DATABASE_URL and no server: the tapes answer every call.
    today = pytest_in(shop.root, "--flux-records", "records")
    assert today.returncode == 0, today.stdout + today.stderr
    assert "4 passed" in today.stdout
    assert not (shop.root / ".flux" / "pgdata").exists()

    line = edit(
        shop,
        CHECKOUT,
        "    order = await ctx.db.fetchone(",
        '    await ctx.db.fetchval("SELECT count(*) FROM orders")\n'
        "    order = await ctx.db.fetchone(",
    )
    broken = pytest_in(shop.root, "--flux-records", "records", "-rf")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "2 failed, 2 passed" in broken.stdout
    assert f"FAILED records/{short(ids['checkout'])}-checkout.json::checkout[" in broken.stdout
    assert f"diverged at {CHECKOUT}:{line}" in broken.stdout
    assert "SELECT count(*) FROM orders" in broken.stdout  # the call that was made
    assert "Traceback" not in broken.stdout


async def test_a_record_marked_fixed_passes_only_once_the_fix_is_in(shop: Shop) -> None:
    failed = await reshaped_checkout(shop)
    export(
        shop, "--function", "checkout", "--status", "5xx", "--expect", "pass", "-o", "records/fixed"
    )
    (record_file,) = (shop.root / "records" / "fixed").glob("*.json")
    assert json.loads(record_file.read_text())["expect"] == "pass"

    before = pytest_in(shop.root, "--flux-records", "records")
    assert before.returncode == 1, before.stdout + before.stderr
    assert f"replay of checkout {short(failed)} did NOT pass" in before.stdout
    assert "KeyError" in before.stdout and f"at {CHECKOUT}:" in before.stdout

    edit(
        shop,
        CHECKOUT,
        'charge_id = charge["id"]',
        'charge_id = charge.get("id") or charge["charge_id"]',
    )
    after = pytest_in(shop.root, "--flux-records", "records", env={"DATABASE_URL": shop.db})
    assert after.returncode == 0, after.stdout + after.stderr
    assert "1 passed" in after.stdout


async def test_flux_testing_replays_an_id_from_the_store_and_a_file(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await shop_traffic(shop)
    monkeypatch.setenv("DATABASE_URL", shop.db)
    charges = shop.provider.charges

    by_id = await asyncio.to_thread(flux.testing.replay, ids["checkout"][:18], project=shop.root)
    assert by_id.passed and by_id.expect == "same" and by_id.divergence is None
    assert by_id.request_id == ids["checkout"] and by_id.function == "checkout"
    assert by_id.replayed["output"] == by_id.original["output"]

    failure = await asyncio.to_thread(
        flux.testing.assert_replays, ids["duplicate"], project=shop.root
    )
    assert failure.replayed["error"]["type"] == "UniqueViolation"
    with pytest.raises(flux.testing.ReplayMismatch) as raised:
        await asyncio.to_thread(
            flux.testing.assert_replays, ids["duplicate"], project=shop.root, expect="pass"
        )
    assert "did NOT pass" in str(raised.value)
    assert "UniqueViolation" in str(raised.value) and "functions/signup.py:" in str(raised.value)

    exported = export(shop, "--function", "checkout", "--status", "ok", "-o", "records")
    (record_file,) = (Path(r["file"]) for r in exported["records"])
    line = edit(
        shop,
        CHECKOUT,
        "    order = await ctx.db.fetchone(",
        '    await ctx.db.fetchval("SELECT 1")\n    order = await ctx.db.fetchone(',
    )
    monkeypatch.chdir(shop.root)  # the project is found around the record file
    diverged = await asyncio.to_thread(flux.testing.replay, record_file)
    assert not diverged.passed
    assert (diverged.divergence["file"], diverged.divergence["line"]) == (CHECKOUT, line)
    assert f"diverged at {CHECKOUT}:{line}" in diverged.explain()
    assert shop.provider.charges == charges  # nothing was sent


async def test_the_fixture_gives_the_project_and_replays_against_it(shop: Shop) -> None:
    ids = await shop_traffic(shop)
    export(shop, "--window", "1h..now", "--function", "signup", "-o", "records")
    (shop.root / "tests").mkdir(exist_ok=True)
    (shop.root / "tests" / "test_records.py").write_text(
        "from pathlib import Path\n\n"
        "def test_every_signup_record_replays(flux_runtime):\n"
        "    assert flux_runtime.root == Path.cwd()\n"
        "    files = flux_runtime.records('records')\n"
        "    assert len(files) == 2\n"
        "    for file in files:\n"
        "        result = flux_runtime.assert_replays(file)\n"
        "        assert result.function == 'signup'\n"
        "    fixed = {f.name: flux_runtime.replay(f, expect='pass').passed for f in files}\n"
        f"    assert fixed == {{'{short(ids['signup'])}-signup.json': True,\n"
        f"                     '{short(ids['duplicate'])}-signup.json': False}}\n"
    )
    run = pytest_in(shop.root, "tests/test_records.py")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_generated_tests_import_only_the_public_api() -> None:
    from flux.replay._testgen import render

    record = {
        "request_id": "01a2b3c4-0012-7000-8000-000000000000",
        "function": "checkout",
        "kind": "http",
        "method": "POST",
        "route": "checkout",
        "status": "error",
        "http_status": 500,
        "error": {"type": "KeyError", "message": "'id'"},
        "started_at": "2026-01-01T00:00:00+00:00",
        "code_sha": "abc",
    }
    text = render(record, "test_replay_x.json", "..", expect_same=False)
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported == {"__future__", "pathlib", "flux.testing"}
    assert 'expect="pass"' in text


# What `flux test generate` wrote before flux.testing existed, verbatim: such files live in
# users' repositories and must keep passing.
OLD_GENERATED = '''\
"""An old generated test."""

from __future__ import annotations

import json
from pathlib import Path

from flux._testgen import replay_recorded

HERE = Path(__file__).resolve().parent
RECORD = HERE / "test_replay_old.json"
PROJECT = (HERE / "..").resolve()
EXPECT_SAME = True


def test_checkout_old_is_reproduced() -> None:
    result = replay_recorded(RECORD, PROJECT, expect_same=EXPECT_SAME)
    facts = {k: result[k] for k in ("original", "replayed", "divergence", "beyond_tape")}
    assert result["passed"], json.dumps(facts, indent=2, default=str)
'''


async def test_tests_generated_before_flux_testing_still_pass(shop: Shop) -> None:
    ids = await shop_traffic(shop)
    tests = shop.root / "tests"
    tests.mkdir(exist_ok=True)
    done = run_flux(
        ["record", "export", ids["checkout"], "-o", str(tests / "test_replay_old.json")],
        shop.root,
        env={"DATABASE_URL": shop.db},
    )
    assert done.returncode == 0, done.stderr
    (tests / "test_replay_old.py").write_text(OLD_GENERATED)
    run = pytest_in(shop.root, "tests/test_replay_old.py")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_public_names() -> None:
    assert flux.testing.__all__ == [
        "ProjectRuntime",
        "ReplayMismatch",
        "ReplayResult",
        "assert_replays",
        "record_files",
        "replay",
    ]
    for name in flux.testing.__all__:
        assert hasattr(flux.testing, name)
    assert issubclass(flux.testing.ReplayMismatch, AssertionError)


def test_importing_flux_testing_loads_no_machinery() -> None:
    """pytest imports the plugin in every run where Flux is installed: it must stay light."""
    import subprocess

    code = (
        "import sys, flux.testing, flux.replay._plugin; "
        "print(sorted(m for m in sys.modules if m.startswith('flux')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(
        ["flux", "flux._version", "flux.replay", "flux.replay._plugin", "flux.testing"]
    )


def test_bad_input_is_one_sentence(tmp_path: Path, make_project) -> None:
    project = make_project()
    missing = pytest_in(project, "--flux-records", "nowhere")
    assert missing.returncode == 4
    assert "--flux-records" in missing.stderr and "not a directory" in missing.stderr
    records = project / "records"
    records.mkdir()
    (records / "broken.json").write_text("{not json")
    (records / "other.json").write_text('{"format": "something else"}')
    run = pytest_in(project, "--flux-records", "records", "-rf")
    assert run.returncode == 1
    assert "2 failed" in run.stdout and "Traceback" not in run.stdout
    assert "is not JSON" in run.stdout
    assert "is not a Flux record file" in run.stdout
    for args in (
        ["record", "export"],
        ["record", "export", "--window", "soon", "-o", "d"],
        ["record", "export", "--status", "ok"],
        ["record", "export", "--status", "ok", "--expect", "maybe", "-o", "d"],
    ):
        done = run_flux(args, project)
        assert done.returncode != 0 and "Traceback" not in done.stderr, args
        assert len(done.stderr.strip().splitlines()) <= 2, done.stderr
