"""A wrong token that is right but for its last character costs the same time as one that is
wrong from its first: no timing signal a test can measure. (Measured at the comparison, not
over HTTP: a loopback round trip on a loaded two-core machine varies more than any factor a
test could fix, and the suite keeps timings out of its assertions.)

Robust on a noisy two-core machine: the two kinds of guess are interleaved in a shuffled
order (drift and bursts of load hit both alike), each try is timed in this thread's CPU
time (time spent waiting for a core while neighbours run is not counted — wall-clock
medians failed this check at 1.83 on a loaded machine), the first tries warm up and are
dropped,
and the statistic is the median of each kind, compared within a loose factor. The check on
the comparison itself uses a 1 MB token, where a plain ``==`` would take tens of
microseconds for the near miss (a memcmp of 1 MB) and well under one for the far miss (the
first byte differs) — hundreds of times the factor — while hashing both sides costs the
same for both.
"""

from __future__ import annotations

import random
import secrets
import statistics
import time
from collections.abc import Callable

from flux.runtime._access import AdminAccess

FACTOR = 1.5  # medians of equal work sit within a few percent; a leak would not


def near_and_far(token: str) -> tuple[str, str]:
    """A wrong guess sharing all but the last character, and one sharing nothing."""
    last = "A" if token[-1] != "A" else "B"
    first = "A" if token[0] != "A" else "B"
    far = first + "".join("A" if c != "A" else "B" for c in token[1:])
    return token[:-1] + last, far


def medians(attempt: Callable[[str], float], guesses: dict[str, str], rounds: int,
            warmup: int = 20) -> dict[str, float]:
    order = [kind for kind in guesses for _ in range(rounds)]
    random.Random(11).shuffle(order)
    for kind in list(guesses) * (warmup // 2):
        attempt(guesses[kind])
    times: dict[str, list[float]] = {kind: [] for kind in guesses}
    for kind in order:
        times[kind].append(attempt(guesses[kind]))
    return {kind: statistics.median(values) for kind, values in times.items()}


def test_the_comparison_costs_the_same_for_a_near_miss_and_a_far_miss() -> None:
    token = secrets.token_urlsafe(768 * 1024)  # 1 MB of text
    access = AdminAccess.with_token(token)
    near, far = near_and_far(token)

    def attempt(guess: str) -> float:
        started = time.thread_time()  # this thread's CPU: waiting for a core is not counted
        matched = access.matches(guess)
        elapsed = time.thread_time() - started
        assert not matched
        return elapsed

    got = medians(attempt, {"near": near, "far": far}, rounds=60)
    ratio = got["near"] / got["far"]
    assert 1 / FACTOR < ratio < FACTOR, got
