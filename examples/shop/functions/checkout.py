"""Charge a user for an order through the payment provider and upgrade them to pro."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flux import function

if TYPE_CHECKING:
    from flux import Context

DEFAULT_PAYMENTS_URL = "http://127.0.0.1:4010"

# Provider charge status -> our order status. A charge still "pending" stays pending
# until the provider's charge.succeeded webhook arrives (see payment_webhook).
ORDER_STATUS = {"succeeded": "paid", "failed": "failed"}


@function
async def checkout(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """Insert a pending order, charge it, then mark it paid and the user pro.

    The order is inserted before the charge so its id can go to the provider. Everything
    runs in the execution's one transaction: if the charge fails, the pending order is
    rolled back with it. ``ctx.http`` sends an ``Idempotency-Key`` on the POST, so a
    resumed checkout never charges the customer twice.
    """
    user_id = _positive_int(ctx, input, "user_id")
    amount_cents = _positive_int(ctx, input, "amount_cents")

    api_key = ctx.secrets.get("PAYMENTS_API_KEY")
    if not api_key:
        raise ctx.error(
            500,
            "payments_not_configured",
            "secret PAYMENTS_API_KEY is not set (flux.toml maps it to SHOP_PAYMENTS_API_KEY)",
        )
    payments_url = ctx.config.get("payments_url", DEFAULT_PAYMENTS_URL).rstrip("/")

    user = await ctx.db.fetchone("SELECT id FROM users WHERE id = %s", [user_id])
    if user is None:
        raise ctx.error(404, "user_not_found", f"no user with id {user_id}")

    order = await ctx.db.fetchone(
        "INSERT INTO orders (user_id, amount_cents, status) VALUES (%s, %s, 'pending')"
        " RETURNING id",
        [user_id, amount_cents],
    )
    order_id = order["id"]

    async with ctx.span("payments.charge"):
        response = await ctx.http.post(
            f"{payments_url}/v1/charges",
            json={
                "amount": amount_cents,
                "currency": "usd",
                "customer": user_id,
                "order_id": order_id,
            },
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=5,
        )
    if not 200 <= response.status < 300:
        raise ctx.error(
            502,
            "payment_failed",
            f"payment provider answered {response.status} for order {order_id}",
        )

    # Read the fields we rely on strictly: a provider that silently reshapes its payload
    # must fail here, loudly, rather than store a wrong charge id.
    charge = response.json()
    charge_id = charge["id"]
    charge_status = charge["status"]
    status = ORDER_STATUS.get(charge_status, "pending")

    await ctx.db.execute(
        "UPDATE orders SET status = %s, charge_id = %s, updated_at = %s WHERE id = %s",
        [status, charge_id, ctx.now(), order_id],
    )
    if status == "paid":
        await ctx.db.execute("UPDATE users SET plan = 'pro' WHERE id = %s", [user_id])
    ctx.log.info(
        "checkout done", order_id=order_id, charge_id=charge_id, charge_status=charge_status
    )
    return {
        "order_id": order_id,
        "charge_id": charge_id,
        "status": status,
        "charge_status": charge_status,
    }


def _positive_int(ctx: Context, input: Any, key: str) -> int:
    """A strictly positive integer field of the input, or a 400 naming the field."""
    value = input.get(key) if isinstance(input, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ctx.error(400, f"invalid_{key}", f"{key} must be a positive integer")
    return value
