"""A fake payment (and email) provider for the shop example, with switchable failure modes.

The shop talks to it over real HTTP, so Flux records genuine timeouts, rate limits, 5xx
answers and silent payload changes: the failures ``flux why``, ``flux replay`` and
``flux resume`` exist for. Run it standalone::

    python examples/shop/fake_provider.py --port 4010

or in-process (tests)::

    provider = FakeProvider()
    port = await provider.start()        # port=0 (default) binds a free port
    provider.mode = "rate_limit"
    ...
    assert provider.charges == 1
    await provider.stop()

Endpoints: ``POST /v1/charges``, ``POST /v1/emails``, and the controls ``GET /_fake/stats``,
``POST /_fake/mode`` (``{"mode": ..., "delay": seconds}``) and ``POST /_fake/reset``.
Only aiohttp is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

MODES = ("ok", "timeout", "rate_limit", "error", "shape_change")
DEFAULT_DELAY = 30.0
HISTORY = 100

Create = Callable[[dict[str, Any]], dict[str, Any] | web.Response]


class FakeProvider:
    """A charges-and-emails API whose behaviour tests switch at will.

    Controls, the same in-process and over HTTP:

    - ``mode``: ``ok``; ``timeout`` (sleep ``delay`` seconds, then answer normally, as a
      provider that processes the charge late does); ``rate_limit`` (429, ``Retry-After: 1``);
      ``error`` (500); ``shape_change`` (200, but the charge's ``id`` is renamed
      ``charge_id`` and ``amount`` becomes a string like ``"9.00"``). Modes apply to every
      ``/v1`` endpoint; only charges are reshaped.
    - ``delay``: seconds a ``timeout`` answer waits (default 30).
    - ``charges`` / ``emails``: how many distinct charges and emails were created; a request
      repeating an ``Idempotency-Key`` gets the first answer again and does not count.
    - ``requests``: the last 100 ``/v1`` requests (method, path, the headers that matter,
      JSON body, answer status).
    - ``reset()``: counters, history, idempotency keys and mode back to the start.

    Changing the mode, resetting or stopping releases requests still sleeping in
    ``timeout`` mode (they answer 503 without creating anything), so a test never waits
    for a 30-second sleep it no longer cares about.
    """

    def __init__(self, *, mode: str = "ok", delay: float = DEFAULT_DELAY) -> None:
        self._release = asyncio.Event()
        self._mode = "ok"
        self.mode = mode
        self.delay = delay
        self.charges = 0
        self.emails = 0
        self.charge_log: dict[str, dict[str, Any]] = {}  # charge id -> charge
        self.email_log: list[dict[str, Any]] = []
        self.requests: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._idempotent: dict[tuple[str, str], dict[str, Any]] = {}  # (path, key) -> body
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self.port: int | None = None

    # -- controls ------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {value!r}")
        self._mode = value
        self._wake_sleepers()

    @property
    def url(self) -> str:
        """Base URL of the running provider, e.g. ``http://127.0.0.1:4010``."""
        if self.port is None:
            raise RuntimeError("the fake provider is not started")
        return f"http://{self._host}:{self.port}"

    def reset(self) -> None:
        """Forget every charge, email, request and key; back to mode ``ok``."""
        self.mode = "ok"
        self.delay = DEFAULT_DELAY
        self.charges = 0
        self.emails = 0
        self.charge_log.clear()
        self.email_log.clear()
        self.requests.clear()
        self._idempotent.clear()

    def stats(self) -> dict[str, Any]:
        """What ``GET /_fake/stats`` answers."""
        return {
            "charges": self.charges,
            "emails": self.emails,
            "mode": self.mode,
            "delay": self.delay,
            "requests": list(self.requests),
        }

    # -- lifecycle -----------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application, for callers that run it themselves."""
        app = web.Application()
        app.router.add_post("/v1/charges", self._charges)
        app.router.add_post("/v1/emails", self._emails)
        app.router.add_get("/_fake/stats", self._stats)
        app.router.add_post("/_fake/mode", self._set_mode)
        app.router.add_post("/_fake/reset", self._reset)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on ``host:port`` (0 picks a free port) and return the bound port."""
        if self._runner is not None:
            raise RuntimeError("the fake provider is already started")
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._host = runner, host
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Stop serving; sleeping ``timeout`` requests are released first."""
        if self._runner is None:
            return
        self._wake_sleepers()
        runner, self._runner, self.port = self._runner, None, None
        await runner.cleanup()

    async def __aenter__(self) -> FakeProvider:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- /v1 -----------------------------------------------------------------------------

    async def _charges(self, request: web.Request) -> web.Response:
        return await self._serve(request, self._create_charge)

    async def _emails(self, request: web.Request) -> web.Response:
        return await self._serve(request, self._create_email)

    async def _serve(self, request: web.Request, create: Create) -> web.Response:
        """Record the request, apply the failure mode, then create (or replay) the object."""
        body = await _json_body(request)
        key = request.headers.get("Idempotency-Key")
        entry: dict[str, Any] = {
            "at": time.time(),
            "method": request.method,
            "path": request.path,
            "headers": {
                "Idempotency-Key": key,
                "Authorization": "Authorization" in request.headers,
                "traceparent": request.headers.get("traceparent"),
            },
            "json": body,
            "mode": self.mode,
            "status": None,
        }
        self.requests.append(entry)
        response = await self._answer(request.path, key, body, create)
        entry["status"] = response.status
        return response

    async def _answer(self, path: str, key: str | None, body: Any, create: Create) -> web.Response:
        mode = self.mode
        if mode == "timeout" and not await self._sleep(self.delay):
            return _error(503, "api_error", "fake provider released this request")
        if mode == "rate_limit":
            return _error(
                429,
                "rate_limit_error",
                "Too many requests, retry later",
                headers={"Retry-After": "1"},
            )
        if mode == "error":
            return _error(500, "api_error", "Internal server error")
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "body must be a JSON object")

        stored = self._idempotent.get((path, key)) if key is not None else None
        replayed = stored is not None
        if stored is not None:
            result = stored
        else:
            created = create(body)
            if isinstance(created, web.Response):  # the request was invalid
                return created
            result = created
            if key is not None:
                self._idempotent[(path, key)] = result

        payload = _reshape(result) if mode == "shape_change" and path == "/v1/charges" else result
        headers = {"Idempotent-Replayed": "true"} if replayed else None
        return web.json_response(payload, headers=headers)

    def _create_charge(self, body: dict[str, Any]) -> dict[str, Any] | web.Response:
        amount, currency = body.get("amount"), body.get("currency", "usd")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            return _error(400, "invalid_request_error", "amount must be a positive integer")
        if not isinstance(currency, str):
            return _error(400, "invalid_request_error", "currency must be a string")
        self.charges += 1
        charge = {
            "id": f"ch_{self.charges}",
            "object": "charge",
            "amount": amount,
            "currency": currency,
            "status": "succeeded",
            "customer": body.get("customer"),
            "created": int(time.time()),
        }
        self.charge_log[charge["id"]] = charge
        return charge

    def _create_email(self, body: dict[str, Any]) -> dict[str, Any] | web.Response:
        to = body.get("to")
        if not isinstance(to, str) or "@" not in to:
            return _error(400, "invalid_request_error", "to must be an email address")
        self.emails += 1
        email = {"id": f"em_{self.emails}", "to": to}
        self.email_log.append({**email, "body": body})
        return email

    # -- /_fake --------------------------------------------------------------------------

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _set_mode(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or body.get("mode") not in MODES:
            return _error(400, "invalid_request_error", f"mode must be one of {', '.join(MODES)}")
        delay = body.get("delay", DEFAULT_DELAY)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            return _error(400, "invalid_request_error", "delay must be a number of seconds >= 0")
        self.mode, self.delay = body["mode"], float(delay)
        return web.json_response({"mode": self.mode, "delay": self.delay})

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})

    # -- helpers -------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> bool:
        """Sleep like a stuck provider; False if released early by a mode change or stop."""
        release = self._release
        try:
            await asyncio.wait_for(release.wait(), timeout=seconds)
        except TimeoutError:
            return True
        return False

    def _wake_sleepers(self) -> None:
        self._release.set()
        self._release = asyncio.Event()


def _reshape(charge: dict[str, Any]) -> dict[str, Any]:
    """The charge as a provider's unannounced v2 serializer would send it."""
    reshaped = {("charge_id" if k == "id" else k): v for k, v in charge.items()}
    reshaped["amount"] = f"{charge['amount'] / 100:.2f}"
    return reshaped


def _error(
    status: int, kind: str, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"type": kind, "message": message}}, status=status, headers=headers
    )


async def _json_body(request: web.Request) -> Any:
    """The request body as JSON whatever its content type (curl -d sends a form type)."""
    text = await request.text()
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


async def _serve_forever(host: str, port: int, mode: str, delay: float) -> None:
    provider = FakeProvider(mode=mode, delay=delay)
    bound = await provider.start(host, port)
    print(f"fake payments provider on http://{host}:{bound} (mode {mode})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await provider.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake payment and email provider for the shop.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4010, help="0 picks a free port")
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument(
        "--delay", type=float, default=DEFAULT_DELAY, help="seconds a timeout-mode answer waits"
    )
    args = parser.parse_args(argv)
    asyncio.run(_serve_forever(args.host, args.port, args.mode, args.delay))


if __name__ == "__main__":
    main()
