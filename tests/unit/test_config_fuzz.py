"""Hostile configuration: random YAML files and env values give a config or one clean error.

``load_config`` may only succeed or raise :class:`ConfigError` whose message is one line; the
CLI turns that into exit 2 and one line on stderr, never a traceback.

The fixed cases below are inputs this suite once found escaping as other exceptions (a non
UTF-8 file, an unparsable URL, a port out of range, a line break in a key, an unwritable log
file); they stay as regression tests.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nagatha.config import ENV_PREFIX, SECTIONS, load_config
from nagatha.errors import ConfigError
from nagatha.testing import run_cli

KEYS = [(section, key) for section, model in SECTIONS.items() for key in model.model_fields]
ENV_NAMES = [f"{ENV_PREFIX}{s}_{k}".upper() for s, k in KEYS] + [
    f"{ENV_PREFIX}{s}__{k}".upper() for s, k in KEYS
]

TRICKY_STRINGS = [
    "",
    " ",
    "0",
    "-1",
    "1e999",
    "nan",
    "inf",
    "99999999999999999999999",
    "true",
    "null",
    "[",
    "[1, 2]",
    '["a", null]',
    "{}",
    '{"a": {}}',
    "a,b,,c",
    "::",
    "\x00",
    "ı",
    "ﬀ",
    "\u2028",
    "line\nbreak",
    "memory://",
    "memory:",
    "amqp://guest:guest@localhost:5672//",
    "amqps://u:p@h:1/v?heartbeat=x",
    "redis://:pw@127.0.0.1:6379/0",
    "unix:///tmp/redis.sock",
    "amqp://[::1/x",
    "ftp://u:secret@host/",
    "DEBUG",
    "debug",
    "json",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(TRICKY_STRINGS),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
key_names = st.sampled_from(sorted({key for _, key in KEYS})) | st.text(max_size=8)
section_bodies = st.dictionaries(key_names, values, max_size=4) | values
section_names = st.sampled_from(list(SECTIONS)) | st.text(max_size=8)
documents = st.dictionaries(section_names, section_bodies, max_size=4) | values

YAML_SNIPPETS = [
    "api: !!python/object/apply:os.system ['true']\n",
    "api: !!python/name:os.system\n",
    "api: {port: !!float 1e400}\n",
    "api: {tokens: !!binary aGVsbG8=}\n",
    "api: {tokens: &x [*x]}\n",
    "modules: {settings: &s {a: *s}}\n",
    "%YAML 1.1\n---\napi: {}\n---\nbroker: {}\n",
    "? [a, b]\n: {}\n",
    "api:\n\tport: 1\n",
    "\ufeffapi: {port: 1}\n",
    "broker: {url: 'amqp://u:p@h//'}\nbroker: {url: 'memory://'}\n",
    "worker: {time_limit: 0x10, max_backoff: 1_500_001}\n",
    "logging: {level: ~, file: 2020-01-01}\n",
]

yaml_texts = st.one_of(
    documents.map(lambda doc: yaml.safe_dump(doc, allow_unicode=True)),
    st.tuples(documents.map(yaml.safe_dump), st.integers(0, 300)).map(lambda t: t[0][: t[1]]),
    st.text(max_size=200),
    st.tuples(st.sampled_from(YAML_SNIPPETS), st.text(max_size=30)).map("".join),
)
env_values = st.text(max_size=40).filter(lambda v: "\x00" not in v) | st.sampled_from(
    TRICKY_STRINGS
)
envs = st.dictionaries(st.sampled_from(ENV_NAMES), env_values, max_size=6)


def _strings(value: Any, depth: int = 0) -> list[tuple[str, int, bool]]:
    """Every string in a parsed document as (text, depth, is_key)."""
    if depth > 20:
        return []
    if isinstance(value, str):
        return [(value, depth, False)]
    if isinstance(value, dict):
        found: list[tuple[str, int, bool]] = []
        for key, item in value.items():
            if isinstance(key, str):
                found.append((key, depth, True))
            found.extend(_strings(item, depth + 1))
        return found
    if isinstance(value, list):
        return [s for item in value for s in _strings(item, depth + 1)]
    return []


def load(text: str | bytes, env: dict[str, str]) -> None:
    """Write ``text`` as the config file and load it with ``env`` in an empty home."""
    with tempfile.TemporaryDirectory(prefix="nagatha-fuzz-") as name:
        folder = Path(name)
        path = folder / "nagatha.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        load_config(path, env=env, home=folder, cwd=folder)


def assert_one_line(exc: ConfigError) -> None:
    message = str(exc)
    assert message.strip(), "empty ConfigError"
    assert len(message.splitlines()) == 1 and "\n" not in message, repr(message)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=yaml_texts, env=envs)
def test_random_yaml_and_env_values_give_a_config_or_one_line_config_error(
    text: str, env: dict[str, str]
) -> None:
    try:
        load(text, env)
    except ConfigError as exc:
        assert_one_line(exc)


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(KEYS), value=env_values)
def test_any_env_value_for_any_key_gives_a_config_or_one_line_config_error(
    key: tuple[str, str], value: str
) -> None:
    env = {f"{ENV_PREFIX}{key[0]}_{key[1]}".upper(): value}
    try:
        load("", env)
    except ConfigError as exc:
        assert_one_line(exc)
        assert f"{key[0]}.{key[1]}" in str(exc)


@pytest.mark.parametrize(
    ("defect", "text", "env"),
    [
        ("bad-url", "", {"NAGATHA_BROKER_URL": "amqp://[::1/x"}),
        ("bad-url", "", {"NAGATHA_API_PORT": "x://[y"}),
        ("key-newline", 'modules: {settings: {"a\\nb": 5}}\n', {}),
        ("utf8", b"api:\n  port: \xff\xfe\n", {}),
    ],
    ids=["bad-url", "bad-url-in-other-key", "key-newline", "utf8"],
)
def test_inputs_that_once_escaped_give_a_one_line_config_error(
    defect: str, text: str | bytes, env: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(text, env)
    assert_one_line(caught.value)


# -- the CLI: exit 2, one line on stderr, never a traceback -----------------------------------


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: empty home, no NAGATHA_* from the caller, no modules."""
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "modules").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NAGATHA_")}
    env.update({"HOME": str(home), "NAGATHA_MODULES_PATHS": str(tmp_path / "modules")})
    return env


def _file(tmp_path: Path, content: str | bytes) -> str:
    path = tmp_path / "broken.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


CLI_CASES = {
    "yaml syntax": ("api: [1,\n  port: 2\n", {}),
    "yaml list": ("- api\n- broker\n", {}),
    "python tag": ("api: !!python/object/apply:os.system ['touch {marker}']\n", {}),
    "port range": (None, {"NAGATHA_API_PORT": "99999"}),
    "missing file": (None, {"NAGATHA_CONFIG": "/nonexistent/nagatha.yaml"}),
    "tokens json": (None, {"NAGATHA_API_TOKENS": '["unterminated'}),
}
CLI_FIXED = {
    "utf8": (b"api: {host: \xff}\n", {}),
    "bad-url": (None, {"NAGATHA_BROKER_URL": "amqp://[::1/x"}),
    "url-port": (None, {"NAGATHA_RESULTS_URL": "redis://127.0.0.1:99999999/0"}),
    "log-file": (None, {"NAGATHA_LOGGING_FILE": "/nonexistent/dir/nagatha.log"}),
}


def _run_list(
    tmp_path: Path, cli_env: dict[str, str], content: str | bytes | None, env: dict[str, str]
) -> tuple[int, str]:
    marker = tmp_path / "pwned"
    if isinstance(content, str):
        content = content.replace("{marker}", str(marker))
    extra = dict(env)
    if content is not None:
        extra["NAGATHA_CONFIG"] = _file(tmp_path, content)
    done = run_cli(["list"], {**cli_env, **extra}, timeout=60)
    assert not marker.exists(), "a YAML tag ran code"
    return done.returncode, done.stderr


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_broken_config_exits_2_with_one_line_and_no_traceback(
    case: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    content, env = CLI_CASES[case]
    code, stderr = _run_list(tmp_path, cli_env, content, env)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr


@pytest.mark.parametrize("case", sorted(CLI_FIXED))
def test_config_defects_found_by_fuzzing_now_exit_2(
    case: str, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    content, env = CLI_FIXED[case]
    code, stderr = _run_list(tmp_path, cli_env, content, env)
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert code == 2, stderr
