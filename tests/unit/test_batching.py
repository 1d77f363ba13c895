"""WriteBatcher: group commit, absorbed deferred writes, order, errors and close."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from nagatha.errors import StoreUnavailable
from nagatha.stores.batching import Write, WriteBatcher
from nagatha.testing import wait_until
from nagatha.types import TaskStatus

TIMEOUT = 10.0


class Sink:
    """A ``send`` that records each batch and can hold the first one until released."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[list[tuple[str, TaskStatus, dict[str, object]]]] = []
        self.sent: list[list[Write]] = []
        self.sending = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.fail_with: StoreUnavailable | None = None

    def __call__(self, writes: list[Write]) -> None:
        self.sending.set()
        assert self.release.wait(TIMEOUT)
        self.batches.append([(w.task_id, w.status, dict(w.fields)) for w in writes])
        self.sent.append(list(writes))
        for write in writes:
            if self.fail_with is not None:
                write.error = self.fail_with
            else:
                write.answer = 1


@pytest.fixture
def sink() -> Sink:
    return Sink(hold_first=True)


@pytest.fixture
def batcher(sink: Sink) -> Iterator[WriteBatcher]:
    batcher = WriteBatcher(sink, "test-writes")
    yield batcher
    sink.release.set()
    batcher.close()


def in_thread(batcher: WriteBatcher, write: Write, answers: list[object]) -> threading.Thread:
    def run() -> None:
        try:
            answers.append(batcher.write(write))
        except StoreUnavailable as exc:
            answers.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def queued(batcher: WriteBatcher, count: int) -> bool:
    return len(batcher._batch.writes) == count


def test_writes_made_during_a_send_go_out_together_in_the_next(
    batcher: WriteBatcher, sink: Sink
) -> None:
    answers: list[object] = []
    first = in_thread(batcher, Write("a", TaskStatus.SUCCESS, {"n": 0}), answers)
    assert sink.sending.wait(TIMEOUT)
    others = [in_thread(batcher, Write(f"b{i}", TaskStatus.SUCCESS, {}), answers) for i in range(5)]
    wait_until(lambda: queued(batcher, 5), timeout=TIMEOUT)
    sink.release.set()
    for thread in [first, *others]:
        thread.join(TIMEOUT)
    assert answers == [1] * 6
    assert [len(batch) for batch in sink.batches] == [1, 5]


def test_a_deferred_write_still_queued_is_absorbed_by_the_next_write_of_its_task(
    batcher: WriteBatcher, sink: Sink
) -> None:
    answers: list[object] = []
    blocker = in_thread(batcher, Write("x", TaskStatus.SUCCESS, {}), answers)
    assert sink.sending.wait(TIMEOUT)
    batcher.defer(Write("t", TaskStatus.STARTED, {"started_at": "s", "completed_at": None}))
    batcher.defer(Write("u", TaskStatus.STARTED, {"started_at": "s2"}))
    final = in_thread(
        batcher, Write("t", TaskStatus.SUCCESS, {"result": 1, "completed_at": "c"}), answers
    )
    wait_until(lambda: queued(batcher, 3), timeout=TIMEOUT)
    sink.release.set()
    blocker.join(TIMEOUT)
    final.join(TIMEOUT)
    assert answers == [1, 1]
    assert [w.absorbed for w in sink.sent[1]] == [False, True]
    # "t" goes out once, as its outcome with started_at; "u" (nothing after it) on its own.
    assert sink.batches[1] == [
        ("u", TaskStatus.STARTED, {"started_at": "s2"}),
        ("t", TaskStatus.SUCCESS, {"started_at": "s", "completed_at": "c", "result": 1}),
    ]


def test_a_deferred_write_already_sent_is_not_absorbed_and_keeps_its_order(
    batcher: WriteBatcher, sink: Sink
) -> None:
    batcher.defer(Write("t", TaskStatus.STARTED, {"started_at": "s"}))
    assert sink.sending.wait(TIMEOUT)  # the started write is being sent now
    answers: list[object] = []
    final = in_thread(batcher, Write("t", TaskStatus.SUCCESS, {"result": 1}), answers)
    wait_until(lambda: queued(batcher, 1), timeout=TIMEOUT)
    sink.release.set()
    final.join(TIMEOUT)
    assert sink.batches == [
        [("t", TaskStatus.STARTED, {"started_at": "s"})],
        [("t", TaskStatus.SUCCESS, {"result": 1})],
    ]


def test_a_failed_batch_raises_for_waited_writes_and_sends_deferred_ones_later(
    batcher: WriteBatcher, sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    sink.fail_with = StoreUnavailable("status store (Redis) unavailable: down")
    answers: list[object] = []
    first = in_thread(batcher, Write("a", TaskStatus.SUCCESS, {}), answers)
    assert sink.sending.wait(TIMEOUT)
    with caplog.at_level(logging.WARNING, logger="nagatha.stores"):
        batcher.defer(Write("d", TaskStatus.STARTED, {}))
        sink.release.set()
        first.join(TIMEOUT)
        wait_until(lambda: len(sink.batches) >= 3, timeout=TIMEOUT)  # d failed, then again
        sink.fail_with = None  # the store is back: d goes out, once
        wait_until(lambda: sink.sent[-1][0].answer == 1, timeout=TIMEOUT)
    assert len(answers) == 1 and isinstance(answers[0], StoreUnavailable)
    assert [batch for batch in sink.batches[1:] if batch != sink.batches[1]] == []
    assert caplog.text.count("task d: started not recorded yet, trying again") == 1


def test_a_deferred_write_that_failed_is_absorbed_by_a_later_write_of_its_task() -> None:
    batches: list[list[tuple[str, TaskStatus]]] = []
    sent: list[Write] = []
    sending, release = threading.Event(), threading.Event()

    def send(writes: list[Write]) -> None:  # the first batch fails: the store is down
        sending.set()
        assert release.wait(TIMEOUT)
        batches.append([(write.task_id, write.status) for write in writes])
        sent.extend(writes)
        for write in writes:
            if len(batches) == 1:
                write.error = StoreUnavailable("status store (Redis) unavailable: down")
            else:
                write.answer = 1

    batcher = WriteBatcher(send, "test-requeue")
    try:
        batcher.defer(Write("d", TaskStatus.STARTED, {"started_at": "s"}))
        assert sending.wait(TIMEOUT)
        answers: list[object] = []
        outcome = in_thread(batcher, Write("d", TaskStatus.SUCCESS, {"result": 1}), answers)
        wait_until(lambda: queued(batcher, 1), timeout=TIMEOUT)
        release.set()
        outcome.join(TIMEOUT)
    finally:
        batcher.close()
    assert answers == [1]  # the outcome carries what the started write would have
    assert batches == [[("d", TaskStatus.STARTED)], [("d", TaskStatus.SUCCESS)]]
    outcome_write = sent[-1]
    assert outcome_write.fields == {"started_at": "s", "result": 1}
    assert outcome_write.absorbed  # the store counts the start with it


def test_a_send_that_raises_fails_its_writes_instead_of_hanging_them() -> None:
    def broken(writes: list[Write]) -> None:
        raise RuntimeError("bug")

    batcher = WriteBatcher(broken, "test-broken")
    try:
        with pytest.raises(StoreUnavailable, match="RuntimeError: bug"):
            batcher.write(Write("a", TaskStatus.SUCCESS, {}))
    finally:
        batcher.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_writer_thread_that_dies_fails_its_writes_and_counts_as_closed() -> None:
    def fatal(writes: list[Write]) -> None:
        raise SystemExit("the writer thread ends here")

    batcher = WriteBatcher(fatal, "test-fatal")
    with pytest.raises(StoreUnavailable, match="not sent"):
        batcher.write(Write("a", TaskStatus.SUCCESS, {}))
    batcher._thread.join(TIMEOUT)  # its end is reported within this test
    assert batcher.closed


def test_close_sends_what_is_queued_then_refuses_writes() -> None:
    sink = Sink()
    batcher = WriteBatcher(sink, "test-close")
    batcher.defer(Write("d", TaskStatus.STARTED, {"started_at": "s"}))
    batcher.close()
    assert sink.batches == [[("d", TaskStatus.STARTED, {"started_at": "s"})]]
    assert batcher.closed
    with pytest.raises(StoreUnavailable, match="closed"):
        batcher.write(Write("a", TaskStatus.SUCCESS, {}))
