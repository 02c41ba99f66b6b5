"""Push a job, then fail if asked to: the job must exist only if this execution commits."""

from typing import Any

from flux import function


@function
async def enqueue(ctx: Any, input: dict[str, Any]) -> dict[str, Any]:
    await ctx.db.execute("INSERT INTO notes (body) VALUES (%s)", [input.get("body", "x")])
    job_id = await ctx.queue.push(input.get("function", "noop"), input.get("payload"),
                                  delay=input.get("delay"),
                                  idempotency_key=input.get("key"))
    if input.get("fail"):
        raise ctx.error(500, "asked_to_fail", "failing after the push")
    return {"job_id": job_id}
