"""A job that does nothing: the worker's throughput and exactly-once tests."""

from typing import Any

from flux import function


@function
async def noop(ctx: Any, input: Any) -> Any:
    return input
