"""``timing.Pacer``: a background job's pauses keep its work to a share of the time."""

from __future__ import annotations

import asyncio
import time

import pytest

from complaints_shared.timing import Pacer


def test_the_pause_owed_is_the_rest_of_the_share() -> None:
    assert Pacer(share=0.2).rest_after(0.1) == pytest.approx(0.4)
    assert Pacer(share=0.5).rest_after(0.03) == pytest.approx(0.03)
    assert Pacer(share=1).rest_after(5.0) == 0
    assert Pacer(share=0.2).rest_after(-1.0) == 0  # a clock step back owes nothing


@pytest.mark.parametrize("share", [0, -0.5, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        Pacer(share=share)


async def test_steps_and_pauses_keep_to_the_share() -> None:
    pacer = Pacer(share=0.25)
    started = time.monotonic()
    for _ in range(3):
        await asyncio.sleep(0.04)  # a step: a read the database answers in 40 ms
        await pacer.pause()
    elapsed = time.monotonic() - started
    # 3 × (40 ms of work + 120 ms of rest); the loop's own latency only adds (a stall in a
    # step counts four times: the rest follows the step's measured time).
    assert 0.45 <= elapsed < 2.5, elapsed


async def test_a_pause_ends_at_once_when_the_job_stops() -> None:
    stopping = asyncio.Event()
    pacer = Pacer(share=0.01, stopping=stopping)
    await asyncio.sleep(0.05)  # owes ~5 s of rest
    stopping.set()
    started = time.monotonic()
    await pacer.pause()
    assert time.monotonic() - started < 2.5  # not the ~5 s owed
