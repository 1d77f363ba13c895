"""Shared pieces of the Celery bridge integration tests (not a test module).

* :class:`HubStack` - a vhost and Redis prefix of its own, with ``nagatha worker`` and
  ``nagatha bridge`` subprocesses started on them and stopped by PID.
* :class:`CeleryClient` - the real ``celery`` package as an unmodified client of that stack,
  deleting the result keys of every task it sent.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dramatiq
import pika
import redis
from celery import Celery
from celery.result import AsyncResult

from bridge.task import CeleryTask
from nagatha.config import FrameworkConfig, load_config
from nagatha.stores import RedisStatusStore
from nagatha.testing import (
    LOOPBACK,
    HubProcess,
    RabbitVhost,
    RedisPrefix,
    amqp_channel,
    wait_until,
)
from nagatha.types import TaskRecord, TaskStatus

ROOT = Path(__file__).resolve().parents[2]
#: The Redis DB the tests use; Celery result keys there are per task id and deleted after.
CELERY_BACKEND = f"redis://{LOOPBACK}:6379/15"
BRIDGE_READY = r"bridge (\S+) consuming"
WORKER_READY = r"worker process \d+ consuming"


class HubStack:
    """An isolated hub on the local RabbitMQ and Redis; :meth:`close` removes everything."""

    def __init__(self, workdir: Path, **settings: str) -> None:
        self.workdir = workdir
        self.home = workdir / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.vhost = RabbitVhost()
        self.prefix = RedisPrefix()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NAGATHA_")}
        self.env.update(
            {
                "HOME": str(self.home),
                "NAGATHA_BROKER_URL": self.vhost.url,
                "NAGATHA_RESULTS_URL": self.prefix.url,
                "NAGATHA_RESULTS_PREFIX": self.prefix.prefix,
                "NAGATHA_MODULES_PATHS": str(ROOT / "modules"),
                "NAGATHA_LOGGING_LEVEL": "INFO",
                "NAGATHA_WORKER_SHUTDOWN_GRACE": "5",
                "PYTHONPATH": str(ROOT),
                **settings,
            }
        )
        self.config: FrameworkConfig = load_config(
            env=self.env, home=self.home, cwd=self.home
        ).config
        self.store = RedisStatusStore(self.config.results.url, prefix=self.config.results.prefix)
        self.processes: list[HubProcess] = []

    def start(self, args: list[str], **settings: str) -> HubProcess:
        """Start ``nagatha ARGS`` with this stack's environment plus ``settings``."""
        process = HubProcess(args, {**self.env, **settings}, cwd=self.workdir)
        self.processes.append(process)
        return process

    def start_worker(self, **settings: str) -> HubProcess:
        """A running ``nagatha worker`` (one process, four threads)."""
        worker = self.start(["worker", "--processes", "1", "--threads", "4"], **settings)
        worker.wait_for_log(WORKER_READY, timeout=90)
        return worker

    def start_bridge(self, **settings: str) -> HubProcess:
        """A running ``nagatha bridge``, consuming once this returns."""
        bridge = self.start(["bridge"], **settings)
        bridge.wait_for_log(BRIDGE_READY, timeout=90)
        return bridge

    def publish_due_later(self, task_id: str, eta: datetime, *, record_ttl: int) -> None:
        """Publish what a worker sees when a hop of a long countdown ends: a bridged
        ``echo_bot.echo`` (message ``"later"``) in the ``default`` queue whose Celery ``eta``
        is still ahead, with no delay left; its pending record expires in ``record_ttl`` s."""
        now = datetime.now(UTC)
        record = TaskRecord(
            task_id=task_id,
            task_name="echo_bot.echo",
            status=TaskStatus.PENDING,
            kwargs={"message": "later"},
            created_at=now,
        )
        self.store.create(record)
        self.store.client.expire(self.store._key(task_id), record_ttl)
        task = CeleryTask(task_id=task_id, task_name="echo_bot.echo", eta=eta)
        message = dramatiq.Message(
            queue_name="default",
            actor_name="echo_bot.echo",
            args=(),
            kwargs={"message": "later"},
            options={"celery": task.to_options()},
            message_id=task_id,
            message_timestamp=int(time.time() * 1000),
        )
        with amqp_channel(self.vhost.url) as channel:
            channel.confirm_delivery()
            properties = pika.BasicProperties(delivery_mode=2)
            channel.basic_publish("", "default", message.encode(), properties)

    def record(self, task_id: str) -> TaskRecord | None:
        """The hub's status record of ``task_id``."""
        return self.store.get(task_id)

    def final_record(self, task_id: str, timeout: float = 60) -> TaskRecord:
        """Wait for the hub record of ``task_id`` to be final."""
        return wait_until(
            lambda: (r := self.store.get(task_id)) is not None and r.status.final and r,
            timeout,
            message=f"a final hub record for {task_id}",
        )

    def close(self) -> None:
        """Stop every process (by PID), then delete the vhost and the Redis keys."""
        for process in self.processes:
            if process.process.poll() is None:
                process.stop(timeout=30)
        self.store.close()
        self.vhost.delete()
        self.prefix.cleanup()


@contextmanager
def hub_stack(workdir: Path, **settings: str) -> Iterator[HubStack]:
    """A :class:`HubStack`, closed on exit."""
    stack = HubStack(workdir, **settings)
    try:
        yield stack
    finally:
        stack.close()


class CeleryClient:
    """An unmodified Celery 5 client of ``stack``; :meth:`close` deletes its result keys."""

    def __init__(self, stack: HubStack, backend: str = CELERY_BACKEND, **conf: Any) -> None:
        self.app = Celery(
            "nagatha-bridge-tests", broker=stack.vhost.url, backend=backend, set_as_current=False
        )
        self.app.conf.update(conf)
        self.ids: list[str] = []

    def send(self, name: str, *args: Any, **kwargs: Any) -> AsyncResult:
        """``app.send_task(name, ...)``, remembering the id for the cleanup."""
        result = self.app.send_task(name, *args, **kwargs)
        self.ids.append(result.id)
        return result

    def result(self, task_id: str) -> AsyncResult:
        """A fresh ``AsyncResult`` for ``task_id``."""
        self.ids.append(task_id)
        return AsyncResult(task_id, app=self.app)

    @staticmethod
    def new_id() -> str:
        """A task id chosen by the client."""
        return f"client-chosen-{uuid.uuid4()}"

    def close(self) -> None:
        """Close the app and delete ``celery-task-meta-<id>`` of every id it used."""
        self.app.close()
        client = redis.Redis.from_url(CELERY_BACKEND)
        try:
            for start in range(0, len(self.ids), 500):
                client.delete(*(f"celery-task-meta-{i}" for i in self.ids[start : start + 500]))
        finally:
            client.close()
