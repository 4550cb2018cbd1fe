"""The token bucket, on a clock the test controls."""

from __future__ import annotations

from chatsubo.server.ratelimit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.1
    assert bucket.take()
    assert not bucket.take()


def test_refill_is_capped_at_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=3, clock=clock)
    clock.now += 100
    assert sum(bucket.take() for _ in range(10)) == 3


def test_sustained_rate_is_honoured() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100, burst=1, clock=clock)
    allowed = 0
    for _ in range(1000):
        clock.now += 0.001
        allowed += bucket.take()
    assert 95 <= allowed <= 101
