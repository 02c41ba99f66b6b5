"""The rest of the web view's promises (issue 22), in Chromium on the example shop: the
list's every filter ``flux ls`` has (function, status, kind, window) and copyable ids; an
execution's request and response, a span's tape value and log lines, the links to the
request that enqueued a job and to the job it pushed, to its replays; the why panel's
departure from the last success and its similar failures; the "incomplete record" banner."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from flux.jobs._worker import Worker
from flux.runtime._access import AdminAccess
from tests.fixtures.projects import run_flux
from tests.fixtures.shop import SECRET
from tests.web.conftest import Live, serve_live

CHECKOUT = "functions/checkout.py"
BUG = ('charge_status = charge["status"]', 'charge_status = charge["state"]')
PEEK = """import socket

from flux import function


@function
def peek(ctx, input):
    socket.create_connection(("127.0.0.1", PORT)).close()  # unrecorded
    return {"peeked": True}
"""


@pytest.fixture(scope="module")
def live(
    module_db: str, payments_key: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """A signup and the job it pushed (run), a checkout that succeeds, two that fail alike
    after a bad edit, a replay of the first failure, and an unrecorded socket."""
    root = tmp_path_factory.mktemp("web-details") / "shop"
    for served in serve_live(root, module_db, AdminAccess(open_locally=True)):
        _, user, signup = served.post("/signup", {"email": "lin@example.com"})

        assert (
            served.run(Worker(served.shop.runtime).drain()) == 1
        )  # the welcome email, as the queue runs it
        [(job_run,)] = served.sql(
            "SELECT request_id::text FROM flux.trace_requests WHERE kind = 'job'"
        )
        status, _, good = served.post("/checkout", {"user_id": user["id"], "amount_cents": 500})
        assert status == 200
        path = root / CHECKOUT
        original = path.read_text()
        path.write_text(original.replace(*BUG))
        served.reload(CHECKOUT)
        failures = []
        for amount in (700, 900):
            status, _, failed = served.post(
                "/checkout", {"user_id": user["id"], "amount_cents": amount}
            )
            assert status == 500
            failures.append(failed)
        replayed = run_flux(
            ["incident", "replay", "--ids", failures[0], "--json"],
            root,
            env={"DATABASE_URL": module_db, "SHOP_PAYMENTS_API_KEY": SECRET},
        )
        assert replayed.returncode == 1, replayed.stdout + replayed.stderr  # still failing
        [(replay,)] = served.sql(
            "SELECT request_id::text FROM flux.trace_requests WHERE kind = 'replay'"
        )
        port = served.url.rsplit(":", 1)[1]
        (root / "functions" / "peek.py").write_text(PEEK.replace("PORT", port))
        served.reload("functions/peek.py")
        status, _, peeked = served.post("/peek", {})
        assert status == 200, "the peek function is served"
        served.ids.update(
            signup=signup,
            job=job_run,
            good=good,
            first=failures[0],
            second=failures[1],
            replay=replay,
            peek=peeked,
        )
        yield served


def test_every_filter_of_flux_ls_and_copyable_ids(page: Page, live: Live) -> None:
    ids = live.ids
    page.goto(f"{live.url}/_flux/ui/")
    expect(page.locator(f"tr[data-id='{ids['job']}']")).to_be_visible()
    page.fill("input[name=function]", "checkout")
    page.locator("form.filters button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"function=checkout"))
    expect(page.locator(f"tr[data-id='{ids['good']}']")).to_be_visible()
    expect(page.locator(f"tr[data-id='{ids['signup']}']")).to_have_count(0)
    page.fill("input[name=function]", "")
    page.select_option("select[name=kind]", "job")
    expect(page.locator(f"tr[data-id='{ids['job']}']")).to_be_visible()
    expect(page.locator("#executions tbody tr")).to_have_count(1)
    page.select_option("select[name=kind]", "replay")
    expect(page.locator(f"tr[data-id='{ids['replay']}']")).to_be_visible()
    expect(page.locator("#executions tbody tr")).to_have_count(1)
    page.select_option("select[name=kind]", "")
    page.fill("input[name=window]", "2001-01-01..2001-01-02")
    page.locator("form.filters button[type=submit]").click()
    expect(page.locator("#executions tbody")).to_contain_text("no executions match")
    page.fill("input[name=window]", "")
    page.locator("form.filters button[type=submit]").click()
    expect(page.locator(f"tr[data-id='{ids['first']}']")).to_be_visible()

    # the short form shown, the whole id copied
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    copy = page.locator(f"tr[data-id='{ids['first']}'] button.copy")
    expect(copy).to_have_attribute("data-copy", ids["first"])
    copy.click()
    expect(copy).to_have_text("copied")
    assert page.evaluate("navigator.clipboard.readText()") == ids["first"]


def test_request_response_tape_and_log_of_an_execution(page: Page, live: Live) -> None:
    page.goto(f"{live.url}/_flux/ui/x/{live.ids['good']}")
    expect(page.locator(".request-line")).to_contain_text("/checkout")
    expect(page.locator(".request-body")).to_contain_text('"amount_cents": 500')
    response = page.locator("section", has_text="Response").last
    expect(response).to_contain_text('"status": "paid"')
    http = page.locator("#waterfall .span", has_text="http.post")
    http.click()
    detail = page.locator("#waterfall .detail")
    expect(detail.locator("h3", has_text="tape")).to_have_count(1)
    expect(detail).to_contain_text("ch_1")  # the tape's value: the provider's answer
    [logged] = [
        line
        for line in live.shop.record(live.ids["good"])["logs"]
        if line["message"] == "checkout done"
    ]
    page.locator(f"#waterfall .span[data-span='{logged['span_id']}']").click()
    expect(page.locator(f"#waterfall .detail[data-detail='{logged['span_id']}']")).to_contain_text(
        "checkout done"
    )
    expect(page.locator("table.log").first).to_contain_text("checkout done")


def test_links_to_the_job_it_pushed_the_request_that_pushed_it_and_replays(
    page: Page, live: Live
) -> None:
    ids = live.ids
    page.goto(f"{live.url}/_flux/ui/x/{ids['signup']}")
    job = page.locator(".link-job")
    expect(job).to_contain_text("job send_welcome_email (done")
    job.locator("a").first.click()
    expect(page).to_have_url(re.compile(f"/_flux/ui/x/{ids['job']}$"))
    parent = page.locator(".link-parent")
    expect(parent).to_contain_text(ids["signup"][:18])
    parent.locator("a").first.click()
    expect(page).to_have_url(re.compile(f"/_flux/ui/x/{ids['signup']}$"))
    page.goto(f"{live.url}/_flux/ui/x/{ids['first']}")
    derived = page.locator(".link-derived")
    expect(derived).to_contain_text("replayed by")
    expect(derived).to_contain_text(ids["replay"][:18])


def test_why_shows_the_departure_and_similar_failures(page: Page, live: Live) -> None:
    ids = live.ids
    page.goto(f"{live.url}/_flux/ui/x/{ids['second']}")
    why = page.locator("dl.why")
    departed = why.locator("dd", has=page.locator("#diff-last-success"))
    expect(departed).to_contain_text(ids["good"][:18])  # the last success it departed from
    similar = why.locator("dt", has_text="Similar").locator("xpath=following-sibling::dd[1]")
    expect(similar).to_contain_text(ids["first"][:18])  # the same failure, earlier


def test_an_incomplete_record_is_flagged(page: Page, live: Live) -> None:
    page.goto(f"{live.url}/_flux/ui/x/{live.ids['peek']}")
    banner = page.locator(".banner.incomplete")
    expect(banner).to_contain_text("incomplete record")
    expect(banner).to_contain_text("functions/peek.py:8")
    page.goto(f"{live.url}/_flux/ui/x/{live.ids['good']}")
    expect(page.locator(".request-line")).to_be_visible()
    expect(page.locator(".banner.incomplete")).to_have_count(0)


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_fits_a_desktop_and_a_phone(page: Page, live: Live, width: int) -> None:
    ids = live.ids
    page.set_viewport_size({"width": width, "height": 800 if width == 1280 else 844})
    pages = {
        "list": ("/_flux/ui/", f"tr[data-id='{ids['good']}']"),
        "execution": (f"/_flux/ui/x/{ids['second']}", "#root-cause"),
        "row": ("/_flux/ui/row/orders?id=1", "#history tbody tr"),
        "diff": (f"/_flux/ui/diff?a={ids['good']}&b={ids['second']}", "#diff-spans tr"),
    }
    for name, (path, ready) in pages.items():
        page.goto(live.url + path)
        expect(page.locator(ready).first).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth")
        assert overflow <= width, (name, overflow)  # nothing runs off the screen
