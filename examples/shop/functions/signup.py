"""Sign a user up on the free plan and queue their welcome email."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flux import function

if TYPE_CHECKING:
    from flux import Context


@function
async def signup(ctx: Context, input: dict[str, Any]) -> dict[str, Any]:
    """Create the user; the welcome email is a job so a slow mail provider never fails signup.

    A duplicate email is left to the unique constraint on ``users.email``: checking first
    would race with a concurrent signup, and Flux records the violation as a constraint
    failure with its SQLSTATE.
    """
    email = input.get("email") if isinstance(input, dict) else None
    if not isinstance(email, str) or "@" not in email:
        raise ctx.error(400, "invalid_email", "email must contain @")
    email = email.strip()

    user = await ctx.db.fetchone(
        "INSERT INTO users (email, plan) VALUES (%s, 'free') RETURNING id, email, plan",
        [email],
    )
    # Transactional: the job exists only if this signup commits.
    await ctx.queue.push("send_welcome_email", {"user_id": user["id"]})
    ctx.log.info("user signed up", user_id=user["id"])
    return {"id": user["id"], "email": user["email"], "plan": user["plan"]}
