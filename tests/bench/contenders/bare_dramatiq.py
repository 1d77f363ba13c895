"""Bare Dramatiq: a no-op actor on a RabbitMQ broker with no middleware (benchmark only).

Run with ``dramatiq bare_dramatiq --processes N --threads T``. Environment: ``BENCH_BROKER_URL``.
The actor ``bench.noop`` consumes the queue ``bench_bare``.

With ``BENCH_DRAMATIQ_RESULTS=1`` the broker has Dramatiq's own ``Results`` middleware instead
(Redis backend at ``BENCH_BACKEND_URL``, one result write per task) and the actor consumes
``bench_results``: an informative like-for-like reference for a worker that records outcomes.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

WITH_RESULTS = os.environ.get("BENCH_DRAMATIQ_RESULTS") == "1"
QUEUE = "bench_results" if WITH_RESULTS else "bench_bare"


class PrefixedRedisBackend(RedisBackend):
    """Keys ``<namespace>:<message id>`` (Dramatiq hashes them), so the run can delete them."""

    def build_message_key(self, message: dramatiq.Message) -> str:  # type: ignore[override]
        return f"{self.namespace}:{message.message_id}"


middleware: list[dramatiq.Middleware] = []
if WITH_RESULTS:
    backend = PrefixedRedisBackend(
        url=os.environ["BENCH_BACKEND_URL"],
        namespace=f"nagatha-bench-{os.environ.get('BENCH_ID_PREFIX', 'x')}:dramatiq-results",
    )
    middleware = [Results(backend=backend, store_results=True)]

broker = RabbitmqBroker(url=os.environ["BENCH_BROKER_URL"], middleware=middleware)
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench.noop", queue_name=QUEUE, broker=broker)
def noop() -> None:
    """Do nothing."""
    return None
