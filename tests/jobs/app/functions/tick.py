"""A cron function ticking every second (six fields: seconds last)."""

from typing import Any

from flux import function


@function(cron="* * * * * */1")
async def tick(ctx: Any, input: Any) -> Any:
    return input
