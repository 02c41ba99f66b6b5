"""The web view of ``flux serve``: without the admin token every page and asset answers
401 and says nothing; a browser signs in with a form POST of the token (never in a URL) and
gets an HttpOnly SameSite=Strict cookie that no other site can use."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from flux.runtime._access import SESSION_COOKIE, AdminAccess
from tests.web.conftest import Live, screenshot, serve_live

TOKEN = "web-tok-7Qm2Xv9LpR4s"
PAGES = [
    "/_flux/",
    "/_flux/ui",
    "/_flux/ui/",
    "/_flux/ui/x/0000",
    "/_flux/ui/diff?a=1&b=2",
    "/_flux/ui/row/users?id=1",
    "/_flux/ui/static/app.js",
    "/_flux/ui/static/style.css",
    "/_flux/ui/static/icon.svg",
    "/_flux/ui/static/nothing.js",
]


@pytest.fixture(scope="module")
def served(
    module_db: str, payments_key: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("web-serve") / "shop"
    for live in serve_live(root, module_db, AdminAccess.with_token(TOKEN)):
        status, _, rid = live.post("/signup", {"email": "secret-user@example.com"})
        assert status == 200
        live.ids["signup"] = rid
        yield live


def fetch(
    url: str,
    *,
    method: str = "GET",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def test_without_the_token_every_page_and_asset_is_401_and_says_nothing(served: Live) -> None:
    for path in PAGES:
        for cookie in (None, f"{SESSION_COOKIE}=forged", f"{SESSION_COOKIE}={TOKEN}"):
            status, body, headers = fetch(
                served.url + path, headers={"Cookie": cookie} if cookie else {}
            )
            assert status == 401, (path, cookie, status)
            assert "secret-user" not in body and served.ids["signup"][:8] not in body
            assert "app.js" not in body and "Content-Security-Policy" in headers
            if "/static/" in path:
                assert body == ""
            else:  # the sign-in form and nothing else
                assert 'name="token"' in body.replace("name=token", 'name="token"')
    # the token in a URL is never taken
    status, _, _ = fetch(f"{served.url}/_flux/ui/?token={TOKEN}")
    assert status == 401
    status, _, _ = fetch(f"{served.url}/_flux/executions", headers={"Cookie": "flux_session=x"})
    assert status == 401


def test_sign_in_is_refused_from_another_site_or_without_an_origin(served: Live) -> None:
    form = f"token={TOKEN}&next=/_flux/ui/".encode()
    kind = {"Content-Type": "application/x-www-form-urlencoded"}
    host = served.url.removeprefix("http://")
    for origin in (None, "http://evil.example", "null"):
        headers = {**kind, **({"Origin": origin} if origin else {})}
        status, _, answer = fetch(
            f"{served.url}/_flux/ui/signin", method="POST", data=form, headers=headers
        )
        assert status == 403 and "Set-Cookie" not in answer, origin
    status, _, answer = fetch(
        f"{served.url}/_flux/ui/signin",
        method="POST",
        data=b"token=wrong&next=/_flux/ui/",
        headers={**kind, "Origin": f"http://{host}"},
    )
    assert status == 401 and "Set-Cookie" not in answer
    status, _, answer = fetch(
        f"{served.url}/_flux/ui/signin",
        method="POST",
        data=f"token={TOKEN}&next=https://evil.example/".encode(),
        headers={**kind, "Origin": f"http://{host}"},
    )
    assert status == 303 and answer["Location"] == "/_flux/ui/"  # never elsewhere
    cookie = answer["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    session = cookie.split(";", 1)[0]
    status, _, _ = fetch(f"{served.url}/_flux/ui/", headers={"Cookie": session})
    assert status == 200
    # a state change with the cookie still needs the header a page cannot send unasked
    status, body, _ = fetch(
        f"{served.url}/_flux/executions/{served.ids['signup']}/resume",
        method="POST",
        data=b"",
        headers={"Cookie": session, "Content-Type": "text/plain"},
    )
    assert status == 403 and "X-Flux-Client" in body


def test_a_browser_signs_in_and_sees_the_executions(page: Page, served: Live) -> None:
    page.goto(f"{served.url}/_flux/ui/x/{served.ids['signup']}")
    expect(page.locator("input[name=token]")).to_be_visible()
    assert "secret-user" not in page.content()
    screenshot(page, "signin")
    page.fill("input[name=token]", "not-the-token")
    page.click("button[type=submit]")
    expect(page.locator("p.err")).to_contain_text("not this server's admin token")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(f"/_flux/ui/x/{served.ids['signup']}$"))
    expect(page.locator(".request-body")).to_contain_text("secret-user@example.com")
    assert TOKEN not in page.url
    [cookie] = [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != TOKEN
    assert page.evaluate("document.cookie") == ""  # out of the page's scripts' reach
    page.goto(f"{served.url}/_flux/ui/")
    expect(page.locator(f"tr[data-id='{served.ids['signup']}']")).to_be_visible()
    page.click("#signout")
    expect(page.locator("input[name=token]")).to_be_visible()
