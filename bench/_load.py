"""The closed-loop HTTP load that the side-by-side benchmarks drive, and what they measure
of it: a round's latencies and answers, CPU seconds of a process, nearest-rank percentiles."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import psutil


@dataclass
class Round:
    side: str
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, 200s only
    statuses: Counter[int] = field(default_factory=Counter)
    failures: int = 0  # no HTTP answer at all
    sample: str = ""  # the first bad answer or error, to show
    app_cpu: float = 0.0  # CPU seconds the side's server process used in the round
    db_cpu: float = 0.0  # CPU seconds all PostgreSQL processes used in the round

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def bad(self) -> int:
        return self.answered - self.ok + self.failures

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self, width: int = 6) -> str:
        """Requests, throughput, p50/p99 and non-200s: the part of a round's line every
        bench prints (``width``: the latency columns')."""
        return (f"{self.ok:>6} req {self.throughput:>7.1f} req/s  "
                f"p50 {percentile_ms(self.latencies, 0.50):>{width}.1f} ms  "
                f"p99 {percentile_ms(self.latencies, 0.99):>{width}.1f} ms  non-200 {self.bad}")

    def per_request(self, seconds: float) -> float:
        """CPU milliseconds per 200 answer."""
        return seconds / self.ok * 1000 if self.ok else math.nan


async def closed_loop(session: aiohttp.ClientSession, side: str, url: str, body: bytes,
                      concurrency: int, seconds: float) -> Round:
    """``concurrency`` clients, each POSTing ``body`` again as soon as it has an answer,
    until ``seconds`` have passed; requests in flight then are finished and counted."""
    result = Round(side)
    headers = {"Content-Type": "application/json"}
    start = time.perf_counter()
    deadline = start + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    answer = await response.read()
                    status = response.status
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                result.failures += 1
                result.sample = result.sample or f"{type(exc).__name__}: {exc}"
                if result.failures > 100:
                    raise RuntimeError(f"{side}: the server stopped answering "
                                       f"({result.sample})") from exc
                await asyncio.sleep(0.01)
                continue
            result.statuses[status] += 1
            if status == 200:
                result.latencies.append(time.perf_counter() - sent)
            elif not result.sample:
                result.sample = f"{status}: {answer[:300].decode('utf-8', 'replace')}"

    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - start
    return result


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def percentile_ms(values: list[float], q: float) -> float:
    """Nearest-rank percentile of seconds, in milliseconds."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000
