"""The web view under ``/_flux/ui/``: a few static pages that read the admin API's JSON.

The pages are hand-written JavaScript modules and one stylesheet in ``flux/server/web/``
(inside the wheel; no Node toolchain, nothing fetched from elsewhere, so it works offline).
Every page path answers the same shell (``index.html``); ``app.js`` reads the path and asks
the admin API for the facts, building the DOM with ``textContent`` only — recorded data is
attacker-controlled, and a strict Content-Security-Policy (no inline script, nothing from
another origin) stands behind that.

Who may look is the admin API's rule (flux/runtime/_access.py), checked by its guard
(flux/server/_admin.py) before anything here runs: open on ``flux dev`` bound to loopback,
the admin token otherwise. A browser presents the token once, in a form POST to
``/_flux/ui/signin`` (never in a URL), and gets an HttpOnly SameSite=Strict cookie; without
it every page and asset answers 401 with the sign-in form and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import html
from pathlib import Path
from urllib.parse import parse_qs

from aiohttp import web

from flux.runtime._access import SESSION_COOKIE, AdminAccess, Refusal, same_origin

WEB_DIR = Path(__file__).resolve().parent / "web"
PREFIX = "/_flux/ui/"
ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "icon.svg": "image/svg+xml"}
_SIGNIN_STYLE = (
    "body{font:15px system-ui,sans-serif;margin:0;display:grid;place-items:center;"
    "min-height:100vh;background:#f6f7f9;color:#1d2330}form{background:#fff;"
    "padding:24px;border:1px solid #d9dde5;border-radius:8px;width:min(360px,90vw)}"
    "input,button{font:inherit;width:100%;box-sizing:border-box;padding:8px;"
    "margin-top:8px}p.err{color:#b3261e}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_SIGNIN_STYLE.encode()).digest()).decode()
# Scripts and styles from this origin only; no inline script, no eval, nothing framed.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SIGNIN_CSP = CSP.replace("style-src 'self'", f"style-src 'sha256-{_STYLE_HASH}'")


def is_web(path: str) -> bool:
    """Whether a request is for the web view (its pages, assets and sign-in)."""
    return path in ("/_flux/", "/_flux/ui") or path.startswith(PREFIX)


def is_signin(request: web.Request) -> bool:
    return request.method == "POST" and request.path == PREFIX + "signin"


def session_of(request: web.Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE)


def _secure(response: web.StreamResponse, csp: str = CSP) -> web.StreamResponse:
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Content-Type-Options"] = "nosniff"
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on the
    # sign-in form's POST, which could then not be told from another site's.
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    return response


def _is_asset(path: str) -> bool:
    return path.startswith(PREFIX + "static/")


def refused(request: web.Request, refusal: Refusal) -> web.StreamResponse:
    """A refused page is the sign-in form (401) or one sentence (403); a refused asset is
    its status and nothing else. Neither says anything about what the server holds."""
    if _is_asset(request.path):
        return _secure(web.Response(status=refusal.status, text="", content_type="text/plain"))
    if refusal.status == 401:
        message = "" if refusal.message.startswith("the admin API needs") else refusal.message
        return _signin_page(_next_of(request.path_qs), message)
    return _secure(
        web.Response(status=refusal.status, text=refusal.message + "\n", content_type="text/plain")
    )


def _next_of(target: str) -> str:
    """Where to go after signing in: a page of the web view, never elsewhere."""
    if (
        not target.startswith(PREFIX)
        or target.startswith("//")
        or "\\" in target
        or target.startswith(PREFIX + "static/")
        or target.startswith(PREFIX + "sign")
    ):
        return PREFIX
    return target


def _signin_page(next_page: str, message: str = "", status: int = 401) -> web.StreamResponse:
    error = f'<p class="err">{html.escape(message)}</p>' if message else ""
    body = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>Flux · sign in</title><style>{_SIGNIN_STYLE}</style></head><body>"
        f'<form method=post action="{PREFIX}signin"><h1>Flux</h1>'
        "<p>This server's web view needs its admin token (FLUX_ADMIN_TOKEN).</p>"
        f"{error}"
        "<label>Admin token <input type=password name=token required "
        "autocomplete=current-password autofocus></label>"
        f'<input type=hidden name=next value="{html.escape(next_page)}">'
        "<button type=submit>Sign in</button></form></body></html>"
    )
    response = web.Response(status=status, text=body, content_type="text/html")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'FluxSignIn realm="flux admin"'
    return _secure(response, _SIGNIN_CSP)


async def sign_in(request: web.Request, access: AdminAccess) -> web.StreamResponse:
    """The form POST of the token. Only a page of this very site may post it (a browser
    always sends ``Origin`` on a POST): another site cannot sign a browser in as itself."""
    origin = request.headers.get("Origin")
    if origin is None or not same_origin(origin, request.headers.get("Host", "")):
        return _secure(
            web.Response(
                status=403,
                content_type="text/plain",
                text="sign in from this server's own sign-in page\n",
            )
        )
    try:
        form = parse_qs((await request.read()).decode("utf-8", "replace"), max_num_fields=4)
    except ValueError:
        form = {}
    token = (form.get("token") or [""])[0].strip()
    next_page = _next_of((form.get("next") or [PREFIX])[0])
    if access.open_locally:
        raise web.HTTPSeeOther(next_page)
    if access.token_digest is None:
        return refused(
            request,
            Refusal(
                403,
                "admin_closed",
                "the admin API is closed on this server: start it with FLUX_ADMIN_TOKEN set",
            ),
        )
    if not token or not access.matches(token):
        return _signin_page(next_page, "that is not this server's admin token")
    response = web.Response(status=303, headers={"Location": next_page})
    response.set_cookie(
        SESSION_COOKIE,
        access.session() or "",
        httponly=True,
        samesite="Strict",
        path="/_flux/",
        secure=request.secure,
    )
    _secure(response)
    return response


async def sign_in_route(request: web.Request) -> web.StreamResponse:
    """Routed so the router knows the path; the admin guard answers it (it has the door)."""
    raise web.HTTPNotFound()


async def sign_out(request: web.Request) -> web.StreamResponse:
    """Forget the cookie (a POST with the X-Flux-Client header, as every state change)."""
    response = web.json_response({"signed_out": True})
    response.del_cookie(SESSION_COOKIE, path="/_flux/")
    return _secure(response)


async def page(request: web.Request) -> web.StreamResponse:
    """Every page of the web view is the same shell; app.js reads the path."""
    return _secure(
        web.Response(
            body=(WEB_DIR / "index.html").read_bytes(), content_type="text/html", charset="utf-8"
        )
    )


async def asset(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    response = web.Response(body=(WEB_DIR / name).read_bytes(), content_type=ASSETS[name])
    return _secure(response)


async def to_list(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(PREFIX)


WEB_ROUTES = [
    ("GET", "/", to_list),
    ("GET", "/ui", to_list),
    ("GET", "/ui/static/{name}", asset),
    ("POST", "/ui/signout", sign_out),
    ("GET", "/ui/{tail:[\\s\\S]*}", page),
]
