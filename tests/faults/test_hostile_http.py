"""Hand-written hostile requests against a live gunicorn API (``nagatha serve``).

Every case must be answered 4xx with the API's JSON error shape (never 500, never a crash), and
the server must still answer ``/ping`` after each batch. Requests that gunicorn itself refuses
before the app sees them (request line or header limits) are answered 4xx by gunicorn, with
the API's JSON error body too (``nagatha.api.gunicorn_conf.write_json_error``). The HTTP
property run (no 500 on any generated request) is ``tests/integration/test_api_fuzz.py``;
this file is its hand-written complement.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from api_kit import is_error_shape, start_api

from nagatha.testing import HubProcess

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(120)]

TIMEOUT = 15.0


@pytest.fixture
def api(fault_env: dict[str, str], tmp_path: Path) -> Iterator[HubProcess]:
    """One API, 1 worker x 4 threads (a crash of its one worker would show at once)."""
    process = start_api({**fault_env, "NAGATHA_API_MAX_WAIT": "5"}, tmp_path, workers=1)
    try:
        yield process
    finally:
        if process.process.poll() is None:
            process.stop(timeout=40)
        process.log_path.unlink(missing_ok=True)


def _still_up(api: HubProcess) -> None:
    base = api.base_url  # type: ignore[attr-defined]
    assert api.process.poll() is None, api.log()[-3000:]
    assert httpx.get(f"{base}/ping", timeout=TIMEOUT).status_code == 200
    assert "Traceback" not in api.log(), api.log()[-3000:]


def _check(cases: list[tuple[str, httpx.Response]]) -> None:
    bad = [
        (name, r.status_code, r.text[:200])
        for name, r in cases
        if not (400 <= r.status_code < 500 and is_error_shape(r))
    ]
    assert bad == [], bad


def _raw(api: HubProcess, request: bytes) -> int:
    """Send raw bytes; return the status code of the answer, whose body must be JSON."""
    parts = urlsplit(api.base_url)  # type: ignore[attr-defined]
    with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):  # every answer here closes the connection
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = lines[0].split()
    assert len(status) >= 2, data[:200]
    headers = dict(line.lower().split(b":", 1) for line in lines[1:])
    assert headers.get(b"content-type", b"").strip() == b"application/json", data[:300]
    assert json.loads(body)["title"], data[:300]
    return int(status[1])


def _post(client: httpx.Client, body: bytes, content_type: str | None = "application/json"):
    headers = {"Content-Type": content_type} if content_type is not None else {}
    return client.post("/tasks/run", content=body, headers=headers)


def test_hostile_bodies_are_refused_with_400(api: HubProcess) -> None:
    nested = 100_000
    with httpx.Client(base_url=api.base_url, timeout=TIMEOUT) as client:  # type: ignore[attr-defined]
        cases = [
            ("nested arrays 100k", _post(client, b"[" * nested + b"]" * nested)),
            (
                "nested objects 100k in kwargs",
                _post(
                    client,
                    b'{"task_name": "echo_bot.echo", "kwargs": {"message": '
                    + b'{"a":' * nested
                    + b"1"
                    + b"}" * nested
                    + b"}}",
                ),
            ),
            ("1e400", _post(client, b'{"task_name": "echo_bot.echo", "delay_ms": 1e400}')),
            (
                "10**5000 digits",
                _post(client, b'{"task_name": "echo_bot.echo", "delay_ms": ' + b"9" * 5000 + b"}"),
            ),
            (
                "huge int in kwargs",
                _post(
                    client,
                    b'{"task_name": "echo_bot.echo", "kwargs": {"message": ' + b"9" * 5000 + b"}}",
                ),
            ),
            ("NaN", _post(client, b'{"task_name": "echo_bot.echo", "delay_ms": NaN}')),
            ("-Infinity", _post(client, b'{"task_name": "echo_bot.echo", "delay_ms": -Infinity}')),
            ("invalid utf-8", _post(client, b'{"task_name": "echo_bot.\xff\xfe"}')),
            ("overlong utf-8", _post(client, b'{"task_name": "\xc0\xaf"}')),
            ("lone surrogate", _post(client, b'{"task_name": "echo_bot.echo\\ud800"}')),
            ("utf-16 body", _post(client, '{"task_name": "echo_bot.echo"}'.encode("utf-16"))),
            ("bom", _post(client, b'\xef\xbb\xbf{"task_name": "echo_bot.echo"}')),
            ("empty", _post(client, b"")),
            ("whitespace", _post(client, b" \n\t ")),
            ("not json", _post(client, b"task_name=echo_bot.echo")),
            ("array", _post(client, b'["echo_bot.echo"]')),
            ("string", _post(client, b'"echo_bot.echo"')),
            ("null", _post(client, b"null")),
            ("duplicate keys+extra", _post(client, b'{"task_name": "a.b", "x": 1}')),
            ("task_name number", _post(client, b'{"task_name": 1e308}')),
            ("kwargs list", _post(client, b'{"task_name": "echo_bot.echo", "kwargs": [1]}')),
            ("delay negative", _post(client, b'{"task_name": "echo_bot.echo", "delay_ms": -1}')),
            ("truncated", _post(client, b'{"task_name": "echo_bot.echo", "kwargs": {')),
            ("NUL byte", _post(client, b'{"task_name": "echo_bot.echo\x00"}')),
        ]
    _check(cases)
    _still_up(api)


def test_valid_json_that_cannot_be_kept_is_refused_not_500(api: HubProcess) -> None:
    """Found by this suite: ``1e400`` became ``inf`` (202, then a task run with ``inf``) and
    900 levels of nesting passed ``json.loads`` but broke the store (500)."""
    echo = b'{"task_name": "echo_bot.echo", "kwargs": {"message": %s}}'
    with httpx.Client(base_url=api.base_url, timeout=TIMEOUT) as client:  # type: ignore[attr-defined]
        cases = [
            ("kwargs 1e400", _post(client, echo % b"1e400")),
            ("kwargs -1e400", _post(client, echo % b"-1e400")),
            ("kwargs [1e999]", _post(client, echo % b"[0.5, 1e999]")),
            (
                "sleep 1e400",
                _post(client, b'{"task_name": "diagnostics.sleep", "kwargs": {"seconds": 1e400}}'),
            ),
            ("kwargs nested 201", _post(client, echo % (b"[" * 199 + b"]" * 199))),
            ("kwargs nested 900", _post(client, echo % (b"[" * 900 + b"]" * 900))),
            (
                "kwargs nested objects 900",
                _post(client, echo % (b'{"a":' * 900 + b"1" + b"}" * 900)),
            ),
        ]
        _check(cases)
        # Deep but within the limit, and big but finite numbers, are accepted.
        for body in (echo % (b"[" * 150 + b"]" * 150), echo % b"1.7e308", echo % (b"9" * 4000)):
            assert _post(client, body).status_code == 202
    _still_up(api)


def test_wrong_or_missing_content_types_are_refused(api: HubProcess) -> None:
    good = b'{"task_name": "nope.missing"}'
    with httpx.Client(base_url=api.base_url, timeout=TIMEOUT) as client:  # type: ignore[attr-defined]
        cases = [
            (f"content-type {ct!r}", _post(client, b"task_name=echo_bot.echo", ct))
            for ct in (
                None,
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "application/json; charset=latin-1",
                "application/json" + ";" * 2000,
            )
        ]
        cases += [
            ("xml", _post(client, b"<task/>", "application/xml")),
            ("json with missing task", _post(client, good, "application/json")),
            ("GET with body", client.request("GET", "/tasks/run", content=good)),
            ("PUT", client.put("/tasks/run", content=good)),
            ("DELETE task", client.delete("/tasks/x")),
        ]
    _check(cases)
    _still_up(api)


def test_path_tricks_in_task_names_and_ids_are_4xx(api: HubProcess) -> None:
    names = [
        "../../etc/passwd",
        "..%2F..%2Fetc",
        "%00",
        "echo_bot.echo\x00",
        "echo_bot/../echo_bot.echo",
        "a" * 10_240,
        "ünïcødé.τask",
        "\u202etxt.exe",
        "💥.💥",
        " ",
        "echo_bot.echo\r\nX-Injected: 1",
    ]
    with httpx.Client(base_url=api.base_url, timeout=TIMEOUT) as client:  # type: ignore[attr-defined]
        cases = [
            (f"task_name {n[:30]!r}", client.post("/tasks/run", json={"task_name": n}))
            for n in names
        ]
        # httpx normalises "..": those go raw below. 10 KB ids pass gunicorn's 4094-byte
        # request line limit, so gunicorn answers them 414 itself.
        ids = ["%00", "%2e%2e%2fping", "..%2fping", "a" * 3_000, "ünï", "%ff%fe", "%C0%AF"]
        for task_id in ids:
            for prefix in ("/tasks/", "/status/"):
                cases.append((f"GET {prefix}{task_id[:30]}", client.get(prefix + task_id)))
    _check(cases)
    _still_up(api)
    # What httpx will not send: raw NUL and control bytes in the request line.
    for target in (
        b"/tasks/\x00",
        b"/tasks/a\x01b",
        b"/tasks/" + b"a" * 10_240,
        b"/tasks/../ping/x",
        b"/status/../../etc/passwd",
    ):
        status = _raw(api, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert 400 <= status < 500, (target[:30], status)
    _still_up(api)


def test_huge_headers_and_bad_wait_values_are_4xx(api: HubProcess) -> None:
    base = api.base_url  # type: ignore[attr-defined]
    with httpx.Client(base_url=base, timeout=TIMEOUT) as client:
        cases = []
        for wait in ("-1", "nan", "NaN", "inf", "-inf", "1e400", "1" * 3000, "abc", "6", "0x10"):
            for prefix in ("/tasks/", "/status/"):
                cases.append((f"wait={wait[:20]}", client.get(f"{prefix}some-id?wait={wait}")))
        cases.append(("wait twice", client.get("/tasks/some-id?wait=1&wait=abc")))
        long_auth = {"Authorization": "Bearer " + "x" * 4000}
        cases.append(("long auth", client.get("/tasks/x?wait=-1", headers=long_auth)))
    _check(cases)
    # Headers past gunicorn's limits: refused by gunicorn (in JSON too), the server stays up.
    huge_header = b"X-Big: " + b"a" * 20_000 + b"\r\n"
    many_headers = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
    for extra in (
        huge_header,
        many_headers,
        b"Content-Type: \x7f/\x7f\r\n",
        b"Authorization: Bearer \x7f\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: x\r\n",
    ):
        request = b"POST /tasks/run HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra + b"\r\n"
        status = _raw(api, request)
        assert 400 <= status < 500, (extra[:30], status)
    _still_up(api)


def test_malformed_or_broken_off_chunked_bodies_are_400_and_close(api: HubProcess) -> None:
    head = b"POST /tasks/run HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    for body in (
        b"zz\r\n",  # not a chunk size
        b"-1\r\n",
        b'5\r\n{"a":XX0\r\n\r\n',  # no terminator after the chunk
        b'2;a"b\r\n{}\r\n0\r\n\r\n',  # a malformed chunk extension
    ):
        assert _raw(api, head + body) == 400, body
    # A client that stops sending mid-body (the server reads EOF): 400 too, nothing logged
    # as a crash.
    parts = urlsplit(api.base_url)  # type: ignore[attr-defined]
    with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT) as sock:
        sock.sendall(head + b"10\r\n{")
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(65536):
            pass
    _still_up(api)
