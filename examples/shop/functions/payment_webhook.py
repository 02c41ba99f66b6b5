"""Receive the payment provider's events and apply them to orders."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from flux import function

if TYPE_CHECKING:
    from flux import Context

# Event type -> the order status it leads to.
ORDER_STATUS = {"charge.succeeded": "paid", "charge.refunded": "refunded"}


@function(route="webhooks/payments")
async def payment_webhook(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """Store the event once, then move its order to paid or refunded.

    Providers deliver at least once, so the event id is the primary key of
    ``webhook_events``: a redelivery is answered ``{"duplicate": true}`` (a 2xx, so the
    provider stops retrying) and changes nothing. An unknown order is a 404; the event
    row is rolled back with it, so the provider's retry is processed in full later.
    """
    if not isinstance(input, dict):
        raise ctx.error(400, "invalid_event", "event must be a JSON object")
    event_id, event_type, data = input.get("id"), input.get("type"), input.get("data")
    if not isinstance(event_id, str) or not event_id:
        raise ctx.error(400, "invalid_event", "event id must be a non-empty string")
    if not isinstance(event_type, str) or not isinstance(data, dict):
        raise ctx.error(400, "invalid_event", "event needs a type and a data object")

    seen = await ctx.db.fetchone("SELECT id FROM webhook_events WHERE id = %s", [event_id])
    if seen is not None:
        ctx.log.info("duplicate webhook delivery", event_id=event_id)
        return {"duplicate": True, "event_id": event_id}

    await ctx.db.execute(
        "INSERT INTO webhook_events (id, type, payload) VALUES (%s, %s, %s::jsonb)",
        [event_id, event_type, json.dumps(input)],
    )

    status = ORDER_STATUS.get(event_type)
    if status is None:
        # Acknowledge event types we do not handle; retrying them would not help.
        ctx.log.info("webhook event ignored", event_id=event_id, type=event_type)
        return {"duplicate": False, "event_id": event_id, "ignored": True}

    order_id = data.get("order_id")
    if isinstance(order_id, bool) or not isinstance(order_id, int):
        raise ctx.error(400, "invalid_event", "data.order_id must be an integer")
    order = await ctx.db.fetchone(
        "UPDATE orders SET status = %s, charge_id = coalesce(%s, charge_id), updated_at = %s"
        " WHERE id = %s RETURNING id, status",
        [status, data.get("charge_id"), ctx.now(), order_id],
    )
    if order is None:
        raise ctx.error(404, "order_not_found", f"no order with id {order_id}")
    ctx.log.info("webhook applied", event_id=event_id, order_id=order_id, status=status)
    return {"duplicate": False, "event_id": event_id, "order_id": order_id, "status": status}
