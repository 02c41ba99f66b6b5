"""Read an account's balance: a success that writes nothing."""

from __future__ import annotations

from typing import Any

from flux import function


@function
async def balance(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    cents = await ctx.db.fetchval(
        "SELECT coalesce(sum(cents), 0) FROM entries WHERE account = %s",
        [input.get("account", "")])
    return {"account": input.get("account"), "cents": cents}
