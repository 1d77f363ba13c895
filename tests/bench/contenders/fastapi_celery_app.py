"""The hub's HTTP contract written on FastAPI + Celery: the design nagatha replaces.

Run under gunicorn with uvicorn workers::

    gunicorn -k uvicorn.workers.UvicornWorker -w 2 fastapi_celery_app:app

``POST /tasks/run`` sends the task with Celery (publisher confirms, see ``celery_app``) and
answers 202; ``GET /tasks/{id}?wait=S`` reads ``AsyncResult.state`` from the Redis backend every
``BENCH_POLL_S`` seconds (default 0.01) until the task is ready or ``S`` (at most 60) has passed.
Task ids start with ``BENCH_ID_PREFIX`` so the benchmark can remove its result keys.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from celery.result import AsyncResult
from celery_app import app as celery_app
from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

POLL_S = float(os.environ.get("BENCH_POLL_S", "0.01"))
ID_PREFIX = os.environ.get("BENCH_ID_PREFIX", "")[:8]
TASKS = frozenset({"echo_bot.echo", "diagnostics.noop"})
STATES = {
    "PENDING": "pending",
    "RECEIVED": "pending",
    "STARTED": "started",
    "RETRY": "retrying",
    "SUCCESS": "success",
    "FAILURE": "failure",
    "REVOKED": "failure",
}
FINAL = frozenset({"success", "failure"})

app = FastAPI(title="FastAPI + Celery contender")


class RunRequest(BaseModel):
    """Body of ``POST /tasks/run``."""

    task_name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


def _task_id() -> str:
    text = str(uuid.uuid4())
    return f"{ID_PREFIX}{text[len(ID_PREFIX) :]}" if len(ID_PREFIX) == 8 else text


@app.get("/ping")
def ping() -> dict[str, str]:
    """Liveness."""
    return {"status": "ok"}


@app.post("/tasks/run", status_code=202)
def run_task(body: RunRequest) -> dict[str, Any]:
    """Send the task to the broker and return its id."""
    if body.task_name not in TASKS:
        raise HTTPException(status_code=404, detail=f"unknown task {body.task_name!r}")
    task_id = _task_id()
    celery_app.send_task(body.task_name, kwargs=body.kwargs, task_id=task_id)
    return {
        "task_id": task_id,
        "status": "pending",
        "created_at": datetime.now(UTC).isoformat(),
        "status_url": f"/tasks/{task_id}",
    }


@app.get("/tasks/{task_id}")
async def get_task(task_id: str, wait: float = Query(0.0, ge=0.0, le=60.0)) -> dict[str, Any]:
    """The task's state; with ``wait``, poll the result backend until it is final."""
    deadline = time.monotonic() + wait
    while True:
        result = AsyncResult(task_id, app=celery_app)
        status = STATES.get(result.state, result.state.lower())
        if status in FINAL or time.monotonic() >= deadline:
            break
        await asyncio.sleep(POLL_S)
    record: dict[str, Any] = {"task_id": task_id, "status": status, "result": None, "error": None}
    if status == "success":
        record["result"] = result.result
    elif status == "failure":
        record["error"] = repr(result.result)
    return record
