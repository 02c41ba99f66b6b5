"""Job: send a new user their welcome email."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flux import function

if TYPE_CHECKING:
    from flux import Context

DEFAULT_PAYMENTS_URL = "http://127.0.0.1:4010"


@function(retries=3)
async def send_welcome_email(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """Email the user whose id signup queued.

    Runs from the queue, so a failure of the mail provider raises and the queue retries
    with backoff (``retries=3``) instead of failing the signup that queued it.
    """
    user_id = input.get("user_id") if isinstance(input, dict) else None
    if isinstance(user_id, bool) or not isinstance(user_id, int):
        raise ctx.error(400, "invalid_user_id", "user_id must be an integer")

    user = await ctx.db.fetchone("SELECT id, email FROM users WHERE id = %s", [user_id])
    if user is None:
        raise ctx.error(404, "user_not_found", f"no user with id {user_id}")

    api_key = ctx.secrets.get("PAYMENTS_API_KEY")
    if not api_key:
        raise ctx.error(
            500,
            "payments_not_configured",
            "secret PAYMENTS_API_KEY is not set (flux.toml maps it to SHOP_PAYMENTS_API_KEY)",
        )
    payments_url = ctx.config.get("payments_url", DEFAULT_PAYMENTS_URL).rstrip("/")

    # The fake provider doubles as the mail service.
    async with ctx.span("email.send"):
        response = await ctx.http.post(
            f"{payments_url}/v1/emails",
            json={"to": user["email"], "template": "welcome", "user_id": user_id},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=5,
        )
    if not 200 <= response.status < 300:
        raise ctx.error(502, "email_failed", f"mail provider answered {response.status}")
    ctx.log.info("welcome email sent", user_id=user_id, to=user["email"])
    return {"sent_to": user["email"]}
