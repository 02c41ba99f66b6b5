"""The web view of ``flux dev`` in Chromium, on the example shop after a failing checkout:
the live list, an execution's why and waterfall, a row's history, a diff, a resume, and
recorded markup that stays text. The tests read one story in order (one server, one
database for the module)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from flux.runtime._access import AdminAccess
from tests.web.conftest import Live, screenshot, serve_live

CHECKOUT = "functions/checkout.py"
BUG = ('charge_status = charge["status"]', 'charge_status = charge["state"]')


@pytest.fixture(scope="module")
def live(
    module_db: str, payments_key: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """flux dev's door (open on loopback), a success and a failure of checkout."""
    root = tmp_path_factory.mktemp("web") / "shop"
    for served in serve_live(root, module_db, AdminAccess(open_locally=True)):
        _, user, _ = served.post("/signup", {"email": "ada@example.com"})
        status, _, good = served.post("/checkout", {"user_id": user["id"], "amount_cents": 500})
        assert status == 200
        path = root / CHECKOUT
        original = path.read_text()
        path.write_text(original.replace(*BUG))  # the bug: a KeyError after the charge
        served.reload(CHECKOUT)
        status, _, failed = served.post("/checkout", {"user_id": user["id"], "amount_cents": 900})
        assert status == 500 and served.shop.provider.charges == 2
        path.write_text(original)  # the fix, which the server runs from now on
        served.reload(CHECKOUT)
        served.ids.update(good=good, failed=failed, user=str(user["id"]))
        served.ids["line"] = str(
            next(i for i, text in enumerate(original.splitlines(), 1) if BUG[0] in text)
        )
        yield served


def open_failed(page: Page, live: Live) -> None:
    page.goto(f"{live.url}/_flux/ui/x/{live.ids['failed']}")
    expect(page.locator("#root-cause")).to_be_visible()


def test_list_shows_the_failure_and_new_executions_arrive(page: Page, live: Live) -> None:
    page.goto(f"{live.url}/_flux/ui/")
    failed = page.locator(f"tr[data-id='{live.ids['failed']}']")
    expect(failed).to_have_class(re.compile(r"\bfailed\b"))
    expect(failed).to_contain_text(live.ids["failed"][:18])  # the short form
    expect(failed).to_contain_text("KeyError")
    expect(page.locator(f"tr[data-id='{live.ids['good']}']")).not_to_have_class(
        re.compile(r"\bfailed\b")
    )
    screenshot(page, "list")
    _, _, newcomer = live.post("/signup", {"email": "grace@example.com"})
    expect(page.locator(f"tr[data-id='{newcomer}']")).to_be_visible()  # no reload
    page.select_option("select[name=status]", "error")
    expect(page.locator(f"tr[data-id='{newcomer}']")).to_have_count(0)
    expect(page.locator(f"tr[data-id='{live.ids['failed']}']")).to_be_visible()
    assert "status=error" in page.url
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, "list-phone")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # nothing runs off a phone's screen


def test_execution_shows_why_location_and_waterfall(page: Page, live: Live) -> None:
    page.goto(f"{live.url}/_flux/ui/")
    page.locator(f"tr[data-id='{live.ids['failed']}']").click()
    expect(page).to_have_url(re.compile(f"/_flux/ui/x/{live.ids['failed']}$"))
    expect(page.locator("#root-cause")).to_contain_text("KeyError 'state'")
    expect(page.locator("#location")).to_have_text(f"{CHECKOUT}:{live.ids['line']}")
    expect(page.locator(".code .hit")).to_contain_text("charge_status = charge")
    expect(page.locator("#suggestion")).to_contain_text("flux replay")
    expect(page.locator(".rolled").first).to_contain_text("rolled back")
    page.locator("#ai-ask").click()  # the shop has no [ai] table: one sentence says so
    expect(page.locator("#ai-answer")).to_contain_text("[ai]")
    spans = page.locator("#waterfall .span")
    expect(spans).to_have_count(6)
    expect(page.locator("#waterfall .span.err")).to_have_count(2)
    http = page.locator("#waterfall .span", has_text="http.post")
    http.click()
    detail = page.locator("#waterfall .detail")
    expect(detail).to_contain_text("HTTP response")
    expect(detail).to_contain_text("/v1/charges")
    expect(detail).to_contain_text('"succeeded"')
    assert "sk_test_" not in page.content()  # the secret is nowhere on the page
    page.locator("#waterfall .span", has_text="db.insert(orders)").click()
    expect(page.locator("#waterfall .detail", has_text="INSERT INTO orders")).to_have_count(1)
    screenshot(page, "execution")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # a phone's width
    screenshot(page, "execution-phone")


def test_a_mutation_opens_the_rows_history(page: Page, live: Live) -> None:
    open_failed(page, live)
    page.locator(".why .row-link").first.click()
    expect(page).to_have_url(re.compile(r"/_flux/ui/row/orders\?id=2$"))
    history = page.locator("#history tbody tr")
    expect(history.first).to_contain_text("INSERT")
    expect(history.first).to_contain_text(live.ids["failed"][:18])
    expect(history.first).to_contain_text("rolled back")
    # the successful checkout's order: its insert and update, each linked to the execution
    page.goto(f"{live.url}/_flux/ui/row/orders?id=1")
    expect(page.locator("#history tbody tr")).to_have_count(2)
    expect(page.locator("#blame")).to_contain_text("charge_id")
    link = page.locator("#history tbody tr").last.locator("a").first
    expect(link).to_have_text(live.ids["good"][:18])
    screenshot(page, "row")
    link.click()
    expect(page).to_have_url(re.compile(f"/_flux/ui/x/{live.ids['good']}$"))


def test_diff_of_the_success_and_the_failure_shows_the_changed_span(page: Page, live: Live) -> None:
    open_failed(page, live)
    page.locator("#diff-last-success").click()
    expect(page).to_have_url(re.compile(r"/_flux/ui/diff\?a="))
    expect(page.locator("#diff-summary")).to_contain_text("removed")
    removed = page.locator("#diff-spans tr[data-status=removed]")
    expect(removed.first).to_contain_text("db.update(orders)")
    changed = page.locator("#diff-spans tr[data-status=changed]")
    expect(changed.first).to_be_visible()
    screenshot(page, "diff")


def test_resume_from_the_page_charges_once(page: Page, live: Live) -> None:
    charges = live.shop.provider.charges
    open_failed(page, live)
    page.locator("#resume-plan").click()
    plan = page.locator("#resume-plan-table")
    expect(plan).to_contain_text("tape")
    expect(plan).to_contain_text("/v1/charges")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#resume-confirm").click()
    done = page.locator("#resume-done")
    expect(done).to_contain_text("ok")
    screenshot(page, "resume")
    assert live.shop.provider.charges == charges  # served from the tape, not sent again
    assert live.sql("SELECT status, charge_id FROM orders ORDER BY id") == [
        ("paid", "ch_1"),
        ("paid", "ch_2"),
    ]
    [(resumed,)] = live.sql(
        "SELECT request_id::text FROM flux.trace_requests WHERE kind = 'resume'"
    )
    done.locator("a").first.click()
    expect(page).to_have_url(re.compile(f"/_flux/ui/x/{resumed}$"))
    expect(page.locator(".links")).to_contain_text(live.ids["failed"][:18])
    expect(page.locator("table.log")).to_contain_text("checkout done")
    open_failed(page, live)  # and the original links to its resume
    expect(page.locator(".link-derived")).to_contain_text(resumed[:18])


def test_markup_and_escape_sequences_render_as_text(page: Page, live: Live) -> None:
    evil = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2>"
    status, _, carried = live.post(
        "/signup", raw=('{"email": "' + evil.replace('"', '\\"') + '\\u001b[2J\\u202e"}').encode()
    )
    page.goto(f"{live.url}/_flux/ui/x/{carried}")
    body = page.locator(".request-body")
    expect(body).to_contain_text(evil)
    expect(body).to_contain_text("\\u001b[2J")  # the escape shown, not obeyed
    expect(body).to_contain_text("\\u202e")
    status, _, rid = live.post("/%3Cscript%3Ewindow.pwned=3%3C/script%3E%1B[31mred", {})
    assert status == 404
    page.goto(f"{live.url}/_flux/ui/x/{rid}")
    expect(page.locator(".request-line")).to_contain_text("<script>window.pwned=3</script>")
    expect(page.locator(".request-line")).to_contain_text("\\x1b[31mred")
    page.goto(f"{live.url}/_flux/ui/?status=404")
    expect(page.locator(f"tr[data-id='{rid}']")).to_contain_text("<script>")
    assert page.evaluate("window.pwned") is None
    assert page.locator("script").count() == 1 and page.locator("img").count() == 0
    screenshot(page, "markup")


def test_pages_carry_a_strict_content_security_policy(page: Page, live: Live) -> None:
    response = page.goto(f"{live.url}/_flux/ui/")
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    asset = page.request.get(f"{live.url}/_flux/ui/static/app.js")
    assert asset.status == 200 and "createTextNode" in asset.text()
    missing = page.request.get(f"{live.url}/_flux/ui/static/index.py")
    assert missing.status == 404


def test_the_web_assets_are_in_the_package() -> None:
    web = Path(__import__("flux.server", fromlist=["_"]).__file__).parent / "web"
    assert {p.name for p in web.iterdir()} >= {"index.html", "app.js", "style.css"}
