"""Post one ledger entry; a zero amount breaks the CHECK constraint (a 500 after a write)."""

from __future__ import annotations

from typing import Any

from flux import function


@function
async def post_entry(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(input.get("account"), str):
        raise ctx.error(400, "invalid_account", "account must be a string")
    await ctx.db.execute("INSERT INTO entries (account, cents) VALUES (%s, 1)",
                         [input["account"]])
    row = await ctx.db.fetchone(
        "INSERT INTO entries (account, cents) VALUES (%s, %s) RETURNING id",
        [input["account"], input.get("cents", 1)])
    return {"id": row["id"]}
