"""Layered configuration: defaults, home file, local file, environment.

Build it once at the edge (CLI command, gunicorn worker, test fixture) with :func:`load_config`
and pass the :class:`FrameworkConfig` down; nothing else in nagatha reads the environment for
hub settings.

Priority, highest first:

1. environment ``NAGATHA_<SECTION>_<KEY>`` (``NAGATHA_BROKER_URL``, ``NAGATHA_API_PORT``; the
   DESIGN spelling ``NAGATHA_API__PORT`` works too),
2. the file named by ``--config`` / ``NAGATHA_CONFIG``, else ``./nagatha.yaml`` if present,
3. ``~/.nagatha/config.yaml``,
4. the defaults below.

Files merge key by key. Every value remembers where it came from, so ``nagatha config`` can say
so and a bad value is reported as ``key = value (from source): what is expected``.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from nagatha.errors import ConfigError
from nagatha.types import MAX_HOLD_MS

ENV_PREFIX = "NAGATHA_"
#: Prefix of the variables that set keys deep in ``modules.settings``.
NESTED_SETTINGS_ENV = f"{ENV_PREFIX}MODULES__SETTINGS__"
DEFAULT_SOURCE = "default"
MEMORY_URL = "memory://"


def _split_list(value: Any, separator: str) -> Any:
    """Accept a JSON list, a ``separator``-separated string or a list as-is."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a valid JSON list ({exc.msg})") from None
    return [part.strip() for part in text.split(separator) if part.strip()]


def _user_info(url: str) -> str | None:
    """The ``user:password`` part of ``url``'s authority, if it has one."""
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return None
    return netloc.rsplit("@", 1)[0] if "@" in netloc else None


def _misplaced_at(url: str) -> bool:
    """True if ``url`` holds an ``@`` after its authority (which holds none).

    That is how a password with an unencoded ``/``, ``?`` or ``#`` reads
    (``amqp://u:pa#ss@host//``: host ``u``, the password in the fragment), so such a URL is
    refused, and never shown, rather than guessed at.
    """
    _, sep, rest = url.partition("://")
    try:
        netloc = urlsplit(url).netloc
    except ValueError:
        return "@" in rest
    return bool(sep) and "@" not in netloc and "@" in rest


def _check_scheme(url: str, allowed: tuple[str, ...]) -> str:
    if _misplaced_at(url):
        raise ValueError(
            "an '@' after the host: percent-encode '/', '?' and '#' in the password (%2F, %3F, "
            "%23) and any '@' in the vhost, path or query (%40)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    scheme = parts.scheme
    if f"{scheme}://" == MEMORY_URL and url.rstrip("/") == "memory:":
        return MEMORY_URL
    if scheme not in allowed:
        expected = ", ".join(f"{s}://" for s in allowed)
        raise ValueError(f"unknown URL scheme {scheme!r}; expected {expected} or memory://")
    return url


def _check_amqp_url(url: str) -> str:
    """``url`` if it is an AMQP URL (or ``memory://``) whose query parameters pika can read.

    pika reads them only when a process connects: ``?heartbeat=abc`` or a misspelt parameter
    would otherwise pass the config and crash every worker process as it starts.
    ``ssl_options`` is only checked to be a Python literal mapping: pika would open the
    certificate files it names, which need not exist where the config is read (``nagatha
    config`` on another host).
    """
    url = _check_scheme(url, ("amqp", "amqps"))
    if url == MEMORY_URL:
        return url
    import pika  # here: the embedded hub never needs it

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not all(_dict_literal(value) for key, value in query if key == "ssl_options"):
        raise ValueError("ssl_options must be a Python dict literal, such as {'ca_certs': '...'}")
    rest = urlencode([(key, value) for key, value in query if key != "ssl_options"])
    try:
        pika.URLParameters(urlunsplit(parts._replace(query=rest)))
    except Exception as exc:  # whatever pika raises here, a parameter is wrong
        raise ValueError(f"a query parameter pika cannot use: {exc}") from None
    return url


def _dict_literal(text: str) -> bool:
    """True if ``text`` is a Python dict literal (or ``None``), as pika reads ``ssl_options``."""
    try:
        return isinstance(ast.literal_eval(text), dict | None)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return False


def _check_redis_url(url: str) -> str:
    """``url`` if it is a Redis URL (or ``memory://``) that redis-py reads as written.

    redis-py ignores a database number it cannot read (``/13abc`` connects to database 0, where
    no other process of the hub looks) and checks query parameters only when it connects.
    """
    url = _check_scheme(url, ("redis", "rediss", "unix"))
    if url == MEMORY_URL:
        return url
    from redis.connection import parse_url

    parse_url(url)  # type: ignore[no-untyped-call]  # raises ValueError for a bad parameter
    parts = urlsplit(url)
    db = unquote(parts.path).strip("/")
    if parts.scheme != "unix" and db and not db.isdecimal():
        raise ValueError(f"the path must be a database number such as /0, not /{db}")
    for key, value in parse_qsl(parts.query):
        if key == "ssl_cert_reqs" and value not in ("none", "optional", "required"):
            # Celery's URLs spell it CERT_REQUIRED; redis-py refuses that as it connects.
            raise ValueError(f"ssl_cert_reqs must be none, optional or required, not {value!r}")
    return url


class _Section(BaseModel):
    # No inf or nan: `max_wait: .inf` would reach JSON output as Infinity and time.sleep().
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1: `port: true` in YAML would listen on port 1.
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and field.annotation in (int, float):
            raise ValueError("must be a number, not true/false")
        return value


class BrokerConfig(_Section):
    """RabbitMQ connection (``memory://`` selects the in-process embedded broker)."""

    url: str = "amqp://guest:guest@localhost:5672//"
    heartbeat: int = Field(default=30, ge=0, description="AMQP heartbeat in seconds")
    connect_timeout: float = Field(
        default=5.0, gt=0, le=600, description="seconds to wait for RabbitMQ"
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        return _check_amqp_url(value)


class ResultsConfig(_Section):
    """Status store (Redis; ``memory://`` keeps records in process memory)."""

    url: str = "redis://localhost:6379/0"
    # At least an hour: a record must outlive the longest wait of its task between two writes
    # (a delay or a retry's backoff, up to MAX_HOLD_MS), or an accepted id would turn 404.
    ttl: int = Field(
        default=86_400,
        ge=3_600,
        le=10 * 365 * 86_400,
        description="seconds a status record is kept after its last write",
    )
    prefix: str = Field(default="nagatha:", description="prefix of every Redis key the hub writes")
    socket_timeout: float = Field(default=5.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        return _check_redis_url(value)


class ApiConfig(_Section):
    """The HTTP API."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    tokens: list[str] = Field(default_factory=list, description="accepted bearer tokens")
    allow_anonymous: bool = False
    health_public: bool = True
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    max_wait: float = Field(
        default=60.0, ge=0, le=3_600, description="upper bound of ?wait= in seconds"
    )
    workers: int = Field(default=2, ge=1)
    threads: int = Field(default=8, ge=1)
    timeout: int = Field(default=90, ge=1, description="gunicorn worker timeout in seconds")

    @field_validator("tokens", mode="before")
    @classmethod
    def _tokens(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip().startswith("["):
            # Not _split_list, which drops empty parts: "a,,b" or " , " is a mistake here.
            return [part.strip() for part in value.split(",")] if value.strip() else []
        return _split_list(value, ",")

    @field_validator("tokens")
    @classmethod
    def _no_blank_token(cls, value: list[str]) -> list[str]:
        if any(not token.strip() for token in value):
            raise ValueError("a token is empty: remove it or give it a value")
        return value


def check_queue_name(name: str) -> str:
    """Return ``name`` if RabbitMQ takes it as a queue to declare; else raise ``ValueError``.

    An empty name makes RabbitMQ invent one (``amq.gen-...``) and ``amq.`` names are
    reserved (403 on every attempt): neither is a queue a Celery client sends to.
    """
    if not name.strip():
        raise ValueError("a queue name is empty")
    if name.startswith("amq."):
        raise ValueError(f"queue {name[:100]!r}: names starting with 'amq.' are RabbitMQ's own")
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        raise ValueError(f"queue {name[:100]!r}...: longer than AMQP's 255 bytes")
    return name


class BridgeConfig(_Section):
    """The Celery-protocol bridge."""

    queues: list[str] = Field(default_factory=lambda: ["celery"], min_length=1)
    result_backend_url: str | None = None
    result_expires: int = Field(default=86_400, gt=0)
    rpc_replies: bool = True
    track_started: bool = False
    max_message_bytes: int = Field(default=8_388_608, gt=0)
    dead_letter_queue: str = "nagatha.bridge.dead"
    prefetch: int = Field(default=64, ge=1)
    concurrency: int = Field(default=2, ge=1, le=64, description="consumer connections")

    @field_validator("queues", mode="before")
    @classmethod
    def _queues(cls, value: Any) -> Any:
        return _split_list(value, ",")

    @field_validator("queues")
    @classmethod
    def _queue_names(cls, value: list[str]) -> list[str]:
        for name in value:
            check_queue_name(name)
        return value

    @field_validator("dead_letter_queue")
    @classmethod
    def _dead_letter_queue(cls, value: str) -> str:
        return check_queue_name(value)

    @field_validator("result_backend_url")
    @classmethod
    def _backend(cls, value: str | None) -> str | None:
        return None if value is None else _check_redis_url(value)


class WorkerConfig(_Section):
    """Worker processes and the defaults every task inherits unless it sets its own."""

    processes: int = Field(default=2, ge=1)
    threads: int = Field(default=8, ge=1)
    queues: list[str] = Field(default_factory=list)
    shutdown_grace: float = Field(
        default=30.0, ge=0, le=86_400, description="seconds to finish work"
    )
    max_retries: int = Field(default=3, ge=0)
    max_redeliveries: int = Field(
        default=3,
        ge=0,
        description="starts of a task after its worker died running it, before it fails",
    )
    min_backoff: int = Field(default=1_000, ge=0, description="milliseconds")
    max_backoff: int = Field(default=300_000, ge=0, le=MAX_HOLD_MS, description="milliseconds")
    time_limit: int = Field(default=600_000, gt=0, description="milliseconds")
    presence_interval: float = Field(
        default=5.0,
        ge=0.1,
        le=300,
        description="seconds between a worker's or bridge's announcements (GET /workers)",
    )

    @field_validator("queues", mode="before")
    @classmethod
    def _queues(cls, value: Any) -> Any:
        return _split_list(value, ",")


class LoggingConfig(_Section):
    """Logging of every entry point."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    format: Literal["text", "json"] = "text"
    file: str | None = None

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


#: The user's own modules folder: on the default path, and no concern when it does not exist.
USER_MODULES = "~/.nagatha/modules"


def default_module_paths() -> list[str]:
    """The shipped ``modules/`` folder (found from the package) and ``~/.nagatha/modules``."""
    shipped = Path(__file__).resolve().parent.parent / "modules"
    return [str(shipped), str(Path(USER_MODULES).expanduser())]


class ModulesConfig(_Section):
    """Where plug-in modules are found and their settings."""

    paths: list[str] = Field(default_factory=default_module_paths)
    disabled: list[str] = Field(default_factory=list)
    settings: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("paths", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        return _split_list(value, ":")

    @field_validator("disabled", mode="before")
    @classmethod
    def _disabled(cls, value: Any) -> Any:
        return _split_list(value, ",")

    @field_validator("settings", mode="before")
    @classmethod
    def _settings(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON object ({exc.msg})") from None


class FrameworkConfig(_Section):
    """The whole hub configuration."""

    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    results: ResultsConfig = Field(default_factory=ResultsConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    bridge: BridgeConfig = Field(default_factory=BridgeConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    modules: ModulesConfig = Field(default_factory=ModulesConfig)

    @property
    def embedded(self) -> bool:
        """True when the broker is the in-process one (``memory://``)."""
        return self.broker.url == MEMORY_URL

    def with_overrides(self, **sections: dict[str, Any]) -> FrameworkConfig:
        """Return a copy with some keys of some sections replaced (validated again)."""
        data = self.model_dump()
        for section, values in sections.items():
            data[section].update(values)
        return FrameworkConfig.model_validate(data)


SECTIONS: dict[str, type[_Section]] = {
    name: field.annotation  # type: ignore[misc]
    for name, field in FrameworkConfig.model_fields.items()
}


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and, for each ``section.key``, the source its value came from."""

    config: FrameworkConfig
    sources: Mapping[str, str]


def load_yaml_file(path: Path, label: str) -> Any:
    """The YAML document in ``path`` (safe loader), or a one-line :class:`ConfigError`.

    ``label`` names the file in the message (unreadable, not UTF-8, invalid YAML).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {label}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{label} is not UTF-8 text (byte {exc.start}): save it as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{label} nests too deep to read: flatten it") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"invalid YAML in {label}{where}: fix the file's syntax") from None
    if _expands_beyond(data, MAX_YAML_VALUES):
        raise ConfigError(
            f"{label} holds more than {MAX_YAML_VALUES} values once its aliases are expanded: "
            "simplify it"
        )
    return data


#: Most values a config file may hold, each alias counted every time it is used: a few lines
#: of nested aliases (a "billion laughs") would otherwise make every walk of it endless.
MAX_YAML_VALUES = 100_000


def _expands_beyond(data: Any, limit: int) -> bool:
    """True if ``data`` holds more than ``limit`` values, counting shared ones each time."""
    stack, seen = [data], 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(value, dict):
            stack += value.keys()
            stack += value.values()
        elif isinstance(value, list):
            stack += value
    return False


_SECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,40}")


def _read_yaml(path: Path, label: str) -> dict[str, Any]:
    data = load_yaml_file(path, label)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must hold a mapping of sections, not {type(data).__name__}")
    for section, values in data.items():
        if section not in SECTIONS:
            known = ", ".join(SECTIONS)
            # Only a name is echoed: a file that is no config at all (--config /etc/shadow)
            # must not have its lines printed.
            name = repr(section) if _SECTION_NAME.fullmatch(str(section)) else "(not a name)"
            raise ConfigError(
                f"unknown section {name} in {label}; sections are {known} "
                "(is it a nagatha config file?)"
            )
        if values is None:  # every key of the section commented out
            data[section] = {}
        elif not isinstance(values, dict):
            raise ConfigError(f"section {section!r} in {label} must be a mapping of keys")
    return data


def _read_env(env: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    values: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    known: set[str] = set()
    for section, model in SECTIONS.items():
        for key in model.model_fields:
            for name in (f"{ENV_PREFIX}{section}_{key}", f"{ENV_PREFIX}{section}__{key}"):
                name = name.upper()
                known.add(name)
                if name in env:
                    values.setdefault(section, {})[key] = env[name]
                    sources[f"{section}.{key}"] = f"env {name}"
    _refuse_unknown_env(env, known)
    # NAGATHA_MODULES_SETTINGS (a JSON object) merges into the files' settings key by key, as
    # the nested keys below do; text that is no JSON object is left for validation to refuse.
    modules = values.get("modules", {})
    if isinstance(modules.get("settings"), str):
        try:
            parsed = json.loads(modules["settings"])
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            modules["settings"] = parsed
    # Deeper keys of modules.settings: NAGATHA_MODULES__SETTINGS__AI__API_KEY=... sets
    # settings.ai.api_key (lower case; the value read as JSON, else kept as text).
    for name in sorted(n for n in env if n.upper().startswith(NESTED_SETTINGS_ENV)):
        path = [part.lower() for part in name[len(NESTED_SETTINGS_ENV) :].split("__")]
        modules = values.setdefault("modules", {})
        # NAGATHA_MODULES_SETTINGS, if given too, comes first (if it is no object: refused).
        if len(path) < 2 or not all(path) or isinstance(modules.get("settings"), str):
            continue
        # A secret stays text: "12345678" must not become a number nobody redacts.
        value: Any = env[name] if is_secret_name(path[-1]) else _env_value(env[name])
        for part in reversed(path):
            value = {part: value}
        modules["settings"] = _deep_merge(modules.get("settings"), value)
        earlier = sources.get("modules.settings")
        sources["modules.settings"] = f"{earlier} + env {name}" if earlier else f"env {name}"
    return values, sources


#: Variables of ``.env.example`` that docker-compose.yml reads for itself, not for the hub.
COMPOSE_ONLY_ENV = frozenset({"NAGATHA_WORKER_STOP_GRACE"})
#: How alike a variable's key must be to a real one to count as a misspelling of it
#: (difflib's ratio: ``PROT``/``PORT``, ``URI``/``URL``, ``THREAD``/``THREADS``).
TYPO_CUTOFF = 0.66


def _refuse_unknown_env(env: Mapping[str, str], known: set[str]) -> None:
    """Refuse a ``NAGATHA_<SECTION>_<KEY>`` variable whose key is a misspelling of one of that
    section's keys: ignored, it would leave the setting at its default unseen (the same typo
    in a file is refused). Other names are not the hub's to judge: a module's own
    (``NAGATHA_AI_MODEL``, ``NAGATHA_API_CLIENT_ID`` for a module ``api_client``), what
    Kubernetes or Docker links inject (``NAGATHA_API_SERVICE_HOST``), compose's variables."""
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper.startswith(NESTED_SETTINGS_ENV):
            continue
        if upper in known or upper in COMPOSE_ONLY_ENV:
            continue
        rest = upper[len(ENV_PREFIX) :]
        for section, model in SECTIONS.items():
            if not rest.startswith(f"{section.upper()}_"):
                continue
            key = rest[len(section) + 1 :].lstrip("_").lower()
            close = _misspelt(key, list(model.model_fields))
            if close:
                raise ConfigError(
                    f"unknown environment variable {name}: did you mean "
                    f"{ENV_PREFIX}{section.upper()}_{close.upper()}? (a misspelt setting "
                    "would be ignored)"
                )


def _misspelt(key: str, keys: list[str]) -> str | None:
    """The key ``key`` misspells, if any: as many words and alike (``prot``, ``max_wiat``),
    or the same letters but for underscores (``maxwait``). A word more (``tools_threads``,
    a module ``worker_tools``'s variable) is no misspelling."""
    bare = key.replace("_", "")
    for candidate in keys:
        if candidate.replace("_", "") == bare:
            return candidate
    same_words = [k for k in keys if k.count("_") == key.count("_")]
    close = difflib.get_close_matches(key, same_words, n=1, cutoff=TYPO_CUTOFF)
    return close[0] if close else None


def _deep_merge(base: Any, over: Any) -> Any:
    """``over`` laid on ``base``: mappings key by key (at any depth), anything else replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _deep_merge(base.get(k), v) for k, v in over.items()}}
    return over


def _env_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _merge(
    layers: list[tuple[str, dict[str, Any]]],
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    merged: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for label, layer in layers:
        for section, values in layer.items():
            for key, value in values.items():
                _merge_into(merged.setdefault(section, {}), sources, section, key, value, label)
    return merged, sources


def _merge_into(
    target: dict[str, Any],
    sources: dict[str, str],
    section: str,
    key: str,
    value: Any,
    label: str,
) -> None:
    """Lay ``value`` over ``target[key]`` (mappings key by key); a value made of several
    layers names them all as its source ("./nagatha.yaml + env NAGATHA_...")."""
    name = f"{section}.{key}"
    both = isinstance(target.get(key), dict) and isinstance(value, dict)
    sources[name] = f"{sources[name]} + {label}" if both and name in sources else label
    target[key] = _deep_merge(target.get(key), value)


def _describe_error(exc: ValidationError, sources: Mapping[str, str]) -> str:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc[:2])
    source = sources.get(key, DEFAULT_SOURCE)
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r} (from {source}); see `nagatha config` for the valid keys"
    shown_key = " ".join(".".join(loc).split())
    shown = error.get("input")
    if key == "modules.settings":
        shown = MASK  # free-form settings: any part of them may be a secret
    elif key in SECRET_KEYS or (isinstance(shown, str) and "://" in shown):
        shown = mask_value(key, shown)
    message = error["msg"].removeprefix("Value error, ")
    text = f"{shown_key} = {shown!r} (from {source}): {message}"
    return " ".join(text.split())  # one line, whatever the key or message held


def load_config(
    config_file: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
    cwd: Path | None = None,
) -> LoadedConfig:
    """Read every source, merge them by priority and validate the result.

    Raises :class:`ConfigError` with one line naming the key, its source and what is
    expected; a file given explicitly must exist.
    """
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    cwd = Path.cwd() if cwd is None else cwd
    layers: list[tuple[str, dict[str, Any]]] = []

    home_file = home / ".nagatha" / "config.yaml"
    if home_file.is_file():
        layers.append((str(home_file), _read_yaml(home_file, str(home_file))))

    explicit = config_file or env.get(f"{ENV_PREFIX}CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        label = str(path)
        if not path.is_file():
            problem = "is not a file" if path.exists() else "does not exist"
            raise ConfigError(f"config file {label} {problem} (from --config/NAGATHA_CONFIG)")
        layers.append((label, _read_yaml(path, label)))
    elif (cwd / "nagatha.yaml").is_file():
        layers.append(("./nagatha.yaml", _read_yaml(cwd / "nagatha.yaml", "./nagatha.yaml")))

    merged, sources = _merge(layers)
    env_values, env_sources = _read_env(env)
    for section, values in env_values.items():
        target = merged.setdefault(section, {})
        for key, value in values.items():
            label = env_sources[f"{section}.{key}"]
            _merge_into(target, sources, section, key, value, label)

    try:
        config = FrameworkConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe_error(exc, sources)) from None
    all_sources = {
        f"{section}.{key}": sources.get(f"{section}.{key}", DEFAULT_SOURCE)
        for section, model in SECTIONS.items()
        for key in model.model_fields
    }
    return LoadedConfig(config=config, sources=all_sources)


def check_stores(loaded: LoadedConfig) -> None:
    """Raise :class:`ConfigError` for a ``memory://`` store beside a RabbitMQ broker: workers
    elsewhere could not record status in this process's memory. (``serve --embedded``, which
    puts both in memory, does not ask.)"""
    config = loaded.config
    if config.results.url == MEMORY_URL and not config.embedded:
        source = loaded.sources.get("results.url", DEFAULT_SOURCE)
        raise ConfigError(
            f"results.url is memory:// (from {source}) but broker.url is RabbitMQ: workers "
            "elsewhere could not record status in this process's memory; use Redis, or "
            "memory:// for both (the embedded hub)"
        )


SECRET_KEYS = frozenset({"api.tokens"})
#: Last words of module setting names whose values are secrets (``api_key``, ``db-password``,
#: ``clientSecret``, ``signing_key``, ``api_keys``); ``max_tokens`` is not one.
SECRET_WORDS = frozenset(
    {
        "key",
        "keys",
        "apikey",
        "apikeys",
        "token",
        "password",
        "passwords",
        "passwd",
        "pwd",
        "secret",
        "secrets",
        "credential",
        "credentials",
        "passphrase",
        "auth",
        "authorization",
        "cookie",
    }
)
#: Shortest secret value redacted from logs (shorter ones would blank ordinary words).
MIN_REDACTED = 8


def is_secret_name(key: str) -> bool:
    """True if a module setting named ``key`` holds a secret (see :data:`SECRET_WORDS`).

    camelCase, ``-`` and ``.`` separate words like ``_``; "tokens" counts alone or after
    ``api``, ``access``, ``auth``, ``bearer`` or ``refresh`` (``max_tokens`` is an LLM
    setting).
    """
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).lower()
    words = [word for word in re.split(r"[^a-z0-9]+", spaced) if word]
    if not words:
        return False
    if words[-1] in SECRET_WORDS:
        return True
    qualified = {"api", "access", "auth", "bearer", "refresh"}
    return words[-1] == "tokens" and (len(words) == 1 or words[-2] in qualified)


MASK = "****"


# A query parameter: its separator, name and value.
_SECRET_PARAM = re.compile(r"([?&;])([^=&;#]+)=([^&;#]*)")


def mask_url(url: str) -> str:
    """Replace the password of a URL with ``****`` (``amqp://user:****@host//``), and the
    value of each secret-named query parameter (``redis://host/0?password=****``).

    A URL whose password could hide elsewhere (see :func:`_misplaced_at`) shows its scheme
    only.
    """
    if _misplaced_at(url):
        return url.partition("://")[0] + "://" + MASK
    url = _SECRET_PARAM.sub(
        lambda m: m[0] if not is_secret_name(unquote(m[2])) else f"{m[1]}{m[2]}={MASK}", url
    )
    user_info = _user_info(url)
    if user_info is None or ":" not in user_info:
        return url
    scheme, _, rest = url.partition("://")
    user = user_info.split(":", 1)[0]
    return f"{scheme}://{user}:{MASK}@{rest[len(user_info) + 1 :]}"


def _url_secrets(url: str) -> list[str]:
    """The password of ``url`` and the values of its secret-named query parameters, raw and
    percent-decoded."""
    found: list[str] = []
    user_info = _user_info(url)
    if user_info is not None and ":" in user_info:
        found.append(user_info.split(":", 1)[1])
    found += [m[3] for m in _SECRET_PARAM.finditer(url) if is_secret_name(unquote(m[2]))]
    return [text for raw in found for text in (raw, unquote(raw))]


def mask_value(key: str, value: Any) -> Any:
    """Return ``value`` fit to show a person: tokens and secrets hidden, URL passwords masked."""
    if key in SECRET_KEYS:
        return [MASK for _ in value] if isinstance(value, list) else MASK
    if key.startswith("modules.settings.") and is_secret_name(key.rsplit(".", 1)[1]):
        return MASK
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    if isinstance(value, dict):
        return {k: mask_value(f"{key}.{k}", v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_value(key, item) for item in value]
    return value


def secrets_of(config: FrameworkConfig) -> list[str]:
    """Every secret string in the config (tokens, URL passwords and secret query parameters,
    secret module settings), for log redaction."""
    found = list(config.api.tokens)
    for url in (config.broker.url, config.results.url, config.bridge.result_backend_url):
        found += _url_secrets(url) if url else []
    found += _secret_settings(config.modules.settings)
    return [s for s in found if s]


def _secret_settings(value: Any, *, secret: bool = False) -> list[str]:
    """The secrets in module settings, as text, the ones long enough to redact
    (:data:`MIN_REDACTED`): every value at any depth under a secret-named key
    (:func:`is_secret_name`), and the passwords of URLs anywhere else."""
    if isinstance(value, Mapping):
        return [
            text
            for key, item in value.items()
            for text in _secret_settings(item, secret=secret or is_secret_name(str(key)))
        ]
    if isinstance(value, list):
        return [text for item in value for text in _secret_settings(item, secret=secret)]
    if value is None:
        return []
    if secret:
        texts = [str(value)]
    elif isinstance(value, str) and "://" in value:
        texts = _url_secrets(value)
    else:
        return []
    return [text for text in texts if len(text) >= MIN_REDACTED]
