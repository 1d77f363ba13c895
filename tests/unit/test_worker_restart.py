"""The supervisor's wait before it replaces a worker process that died."""

from __future__ import annotations

from nagatha.worker import RESTART_CAP, RESTART_FIRST, STABLE_S, restart_delay


def test_a_process_that_keeps_dying_waits_twice_as_long_each_time_up_to_the_cap() -> None:
    delays = [restart_delay(None, 0.5)]
    for _ in range(8):
        delays.append(restart_delay(delays[-1], 0.5))
    assert delays[:4] == [RESTART_FIRST, 2 * RESTART_FIRST, 4 * RESTART_FIRST, 8 * RESTART_FIRST]
    assert max(delays) == delays[-1] == RESTART_CAP


def test_a_process_that_ran_long_enough_is_restarted_after_the_first_delay_again() -> None:
    assert restart_delay(RESTART_CAP, STABLE_S) == RESTART_FIRST
    assert restart_delay(RESTART_CAP, STABLE_S - 1) == RESTART_CAP
