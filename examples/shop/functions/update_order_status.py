"""Move an order to a new status (shipping, refunds, manual fixes by support)."""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from flux import function

if TYPE_CHECKING:
    from flux import Context

STATUSES = ("pending", "paid", "failed", "shipped", "refunded")


@function
async def update_order_status(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """Set the order's status and return the whole row.

    The status is checked here as well as by the table's CHECK constraint, so a caller's
    typo is a clear 400 rather than a constraint failure. ``updated_at`` comes from
    ``ctx.now()`` rather than SQL ``now()``, so the clock read is on the tape.
    """
    if not isinstance(input, dict):
        raise ctx.error(400, "invalid_input", "input must be a JSON object")
    order_id = input.get("order_id")
    if isinstance(order_id, bool) or not isinstance(order_id, int) or order_id <= 0:
        raise ctx.error(400, "invalid_order_id", "order_id must be a positive integer")
    status = input.get("status")
    if status not in STATUSES:
        raise ctx.error(400, "invalid_status", f"status must be one of {', '.join(STATUSES)}")

    order = await ctx.db.fetchone(
        "UPDATE orders SET status = %s, updated_at = %s WHERE id = %s"
        " RETURNING id, user_id, amount_cents, status, charge_id, created_at, updated_at",
        [status, ctx.now(), order_id],
    )
    if order is None:
        raise ctx.error(404, "order_not_found", f"no order with id {order_id}")
    ctx.log.info("order status updated", order_id=order_id, status=status)
    return {key: _jsonable(value) for key, value in order.items()}


def _jsonable(value: Any) -> Any:
    """Timestamps as ISO 8601 strings, so the row is plain JSON."""
    return value.isoformat() if isinstance(value, (date, datetime)) else value
