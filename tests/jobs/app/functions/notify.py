"""A job that only calls out (no transaction): its record must not wait for a batch."""

from typing import Any

from flux import function


@function
async def notify(ctx: Any, input: Any) -> Any:
    response = await ctx.http.post(input["url"] + "/v1/emails", json={"to": input["to"]})
    return {"status": response.status}
