"""Readiness checks for ``GET /health``: RabbitMQ, the status store, module heartbeats.

Design:

* **Broker**: a fresh pika connection with short timeouts (opened, then closed). The
  registry's own publisher connections cannot answer the question: an idle connection that
  RabbitMQ has already reaped still reports ``is_open``. The embedded (``memory://``) broker
  lives in this process and is always ready.
* **Store**: :meth:`StatusStore.ping`.
* **Heartbeats**: :meth:`TaskRegistry.heartbeat` of each module; they are reported but never
  make the hub unready (a module's own service being down does not stop the hub running
  other tasks), and one that hangs is reported ``timeout`` alone.

The probes run in parallel, each on a daemon thread, with one deadline (``timeout``), so
``/health`` answers within about that time even when a dependency hangs; a probe that missed
the deadline is reported ``timeout`` and, if still running at the next check, is awaited
rather than started again (no pile-up). One report is cached for ``cache_seconds`` and
concurrent requests share it, which bounds the load many probes (or many replicas) put on
RabbitMQ and Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from functools import partial
from typing import Any

from nagatha.api.reuse import Reused
from nagatha.api.schemas import HealthReport
from nagatha.broker_probes import probe_rabbitmq
from nagatha.config import FrameworkConfig, secrets_of
from nagatha.daemon import Probes, check_of
from nagatha.registry import TaskRegistry, late_heartbeat
from nagatha.types import utcnow

Probe = Callable[[], Any]

#: Seconds every probe together may take.
DEFAULT_TIMEOUT = 2.0
#: Seconds a report is reused.
DEFAULT_CACHE = 1.5


class HealthChecker:
    """Probes the hub's dependencies and caches the :class:`HealthReport` briefly."""

    def __init__(
        self,
        registry: TaskRegistry,
        config: FrameworkConfig,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        cache_seconds: float = DEFAULT_CACHE,
        broker_probe: Probe | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.timeout = timeout
        self._secrets = secrets_of(config)
        if broker_probe is not None:
            self._broker_probe = broker_probe
        elif config.embedded:
            self._broker_probe = lambda: "in-process broker (memory://)"
        else:
            self._broker_probe = lambda: probe_rabbitmq(config.broker, timeout)
        self._report = Reused(self._probe_all, cache_seconds, clock)
        self._probes = Probes("nagatha-health")

    def check(self) -> HealthReport:
        """The current report (a cached one if younger than ``cache_seconds``)."""
        return self._report.get()

    def _probe_all(self) -> HealthReport:
        # A thread per probe (each runs once at a time): a hung heartbeat never delays the
        # broker and store probes.
        futures = {
            "broker": self._probes.start("broker", self._broker_probe),
            "store": self._probes.start("store", self.registry.store.ping),
        }
        beats = {
            name: self._probes.start(f"module {name}", partial(self.registry.heartbeat, name))
            for name in self.registry.heartbeat_modules()
        }
        wait([*futures.values(), *beats.values()], timeout=self.timeout)
        checks = {
            name: check_of(future, self.timeout, self._secrets)[0]
            for name, future in futures.items()
        }
        modules = {name: self._heartbeat(future) for name, future in beats.items()}
        ready = all(check.status == "ok" for check in checks.values())
        return HealthReport(
            status="ok" if ready else "unavailable",
            checks=checks,
            modules=modules,
            checked_at=utcnow(),
        )

    def _heartbeat(self, future: Future[Any]) -> dict[str, Any]:
        if not future.done():
            return late_heartbeat(self.timeout)
        return dict(future.result()[1])  # heartbeat() never raises
