"""Config: precedence of sources, list parsing, one-line errors naming key and source."""

from __future__ import annotations

from pathlib import Path

import pytest

from nagatha.config import load_config, mask_url, mask_value, secrets_of
from nagatha.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    return home, cwd


def test_defaults_apply_when_no_source_sets_a_value(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    loaded = load_config(env={}, home=home, cwd=cwd)
    assert loaded.config.broker.url == "amqp://guest:guest@localhost:5672//"
    assert loaded.config.results.url == "redis://localhost:6379/0"
    assert (loaded.config.api.host, loaded.config.api.port) == ("127.0.0.1", 8000)
    assert loaded.config.results.ttl == 86_400
    assert loaded.sources["api.port"] == "default"


def test_env_beats_local_file_beats_home_file_key_by_key(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    write(home / ".nagatha" / "config.yaml", "logging: {level: DEBUG}\napi: {port: 7000}\n")
    write(cwd / "nagatha.yaml", "api: {port: 7100, host: 0.0.0.0}\n")
    loaded = load_config(env={"NAGATHA_API_HOST": "127.0.0.2"}, home=home, cwd=cwd)
    config = loaded.config
    assert config.logging.level == "DEBUG"  # home file kept where nothing overrides it
    assert config.api.port == 7100  # local file beats home file
    assert config.api.host == "127.0.0.2"  # env beats both
    assert loaded.sources["logging.level"].endswith("config.yaml")
    assert loaded.sources["api.port"] == "./nagatha.yaml"
    assert loaded.sources["api.host"] == "env NAGATHA_API_HOST"


def test_a_misspelt_env_variable_is_refused_with_what_it_meant(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    with pytest.raises(ConfigError) as info:
        load_config(env={"NAGATHA_API_PROT": "1"}, home=home, cwd=cwd)
    message = str(info.value)
    assert "did you mean NAGATHA_API_PORT?" in message and "\n" not in message
    typos = (
        ("NAGATHA_BROKER_URI", "URL"),
        ("NAGATHA_WORKER__THREAD", "THREADS"),
        ("NAGATHA_API_MAXWAIT", "MAX_WAIT"),
    )
    for typo, meant in typos:
        with pytest.raises(ConfigError, match=f"did you mean NAGATHA_[A-Z]+_{meant}\\?"):
            load_config(env={typo: "1"}, home=home, cwd=cwd)
    # Not the hub's: a module's own, Kubernetes' service links, compose's, nested settings.
    env = {
        "NAGATHA_AI_MODEL": "m",
        "NAGATHA_API_CLIENT_ID": "a module api_client's",
        "NAGATHA_WORKER_TOOLS_THREADS": "a module worker_tools'",
        "NAGATHA_REQUIRE_SERVICES": "1",
        "NAGATHA_WORKER_STOP_GRACE": "60s",
        "NAGATHA_API_SERVICE_HOST": "10.0.0.1",
        "NAGATHA_API_SERVICE_PORT_HTTP": "8000",
        "NAGATHA_API_PORT_8000_TCP_ADDR": "10.0.0.1",
        "NAGATHA_MODULES__SETTINGS__AI__MODEL": "m",
        "NAGATHA_API__PORT": "7300",
    }
    assert load_config(env=env, home=home, cwd=cwd).config.api.port == 7300


def test_explicit_config_file_replaces_the_local_one(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    home, cwd = dirs
    write(cwd / "nagatha.yaml", "api: {port: 7100}\n")
    other = write(tmp_path / "other.yaml", "api: {port: 7200}\n")
    assert load_config(other, env={}, home=home, cwd=cwd).config.api.port == 7200
    via_env = load_config(env={"NAGATHA_CONFIG": str(other)}, home=home, cwd=cwd)
    assert via_env.config.api.port == 7200


def test_double_underscore_spelling_is_accepted(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    config = load_config(env={"NAGATHA_API__PORT": "9001"}, home=home, cwd=cwd).config
    assert config.api.port == 9001


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("/a", ["/a"]), ("/a:/b", ["/a", "/b"]), ('["/a", "/b:c"]', ["/a", "/b:c"])],
)
def test_module_paths_accept_one_path_colon_list_or_json(
    dirs: tuple[Path, Path], raw: str, expected: list[str]
) -> None:
    home, cwd = dirs
    config = load_config(env={"NAGATHA_MODULES_PATHS": raw}, home=home, cwd=cwd).config
    assert config.modules.paths == expected


@pytest.mark.parametrize(("raw", "expected"), [("a,b", ["a", "b"]), ('["x", "y"]', ["x", "y"])])
def test_api_tokens_accept_comma_list_or_json(
    dirs: tuple[Path, Path], raw: str, expected: list[str]
) -> None:
    home, cwd = dirs
    assert (
        load_config(env={"NAGATHA_API_TOKENS": raw}, home=home, cwd=cwd).config.api.tokens
        == expected
    )


def test_memory_urls_select_embedded_mode(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    env = {"NAGATHA_BROKER_URL": "memory://", "NAGATHA_RESULTS_URL": "memory://"}
    assert load_config(env=env, home=home, cwd=cwd).config.embedded


#: Nine levels of ten aliases each: a billion values once expanded, in ten lines.
BILLION_LAUGHS = "modules:\n  settings:\n    x:\n      l0: &l0 [lol]\n" + "".join(
    f"      l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10)
)


@pytest.mark.parametrize(
    ("env", "files", "needle"),
    [
        ({"NAGATHA_API_PORT": "abc"}, {}, "api.port = 'abc' (from env NAGATHA_API_PORT)"),
        ({"NAGATHA_BROKER_URL": "http://x"}, {}, "broker.url"),
        ({"NAGATHA_RESULTS_TTL": "-1"}, {}, "results.ttl"),
        ({"NAGATHA_RESULTS_TTL": "60"}, {}, "greater than or equal to 3600"),
        ({"NAGATHA_API_TOKENS": '[""]'}, {}, "a token is empty"),
        ({}, {"nagatha.yaml": "api: {port: true}"}, "api.port = True (from ./nagatha.yaml)"),
        ({}, {"nagatha.yaml": "api: {max_wait: false}"}, "must be a number, not true/false"),
        ({"NAGATHA_API_TOKENS": '["ok", "  "]'}, {}, "a token is empty"),
        ({"NAGATHA_API_TOKENS": " , "}, {}, "a token is empty"),
        ({"NAGATHA_API_TOKENS": "a,,b"}, {}, "a token is empty"),
        ({"NAGATHA_BRIDGE_QUEUES": ","}, {}, "bridge.queues"),
        ({"NAGATHA_BRIDGE_QUEUES": '["celery", ""]'}, {}, "a queue name is empty"),
        ({"NAGATHA_BRIDGE_QUEUES": "amq.direct"}, {}, "names starting with 'amq.'"),
        ({"NAGATHA_BRIDGE_DEAD_LETTER_QUEUE": "x" * 256}, {}, "longer than AMQP's 255 bytes"),
        ({"NAGATHA_BROKER_URL": "amqp://u:ab#cd@h//"}, {}, "percent-encode '/', '?' and '#'"),
        ({"NAGATHA_RESULTS_URL": "redis://u:a/b@h/0"}, {}, "percent-encode '/', '?' and '#'"),
        ({"NAGATHA_RESULTS_URL": "redis://h:6379/0?name=w@x"}, {}, "any '@' in the vhost"),
        ({}, {"nagatha.yaml": "api: [1, 2"}, "invalid YAML in ./nagatha.yaml"),
        ({}, {"nagatha.yaml": "apii: {port: 1}"}, "unknown section 'apii'"),
        ({}, {"nagatha.yaml": "api: {prot: 1}"}, "unknown key 'api.prot' (from ./nagatha.yaml)"),
        ({}, {"nagatha.yaml": "- 1\n- 2\n"}, "must hold a mapping"),
        ({"NAGATHA_CONFIG": "/nonexistent/n.yaml"}, {}, "does not exist"),
        ({"NAGATHA_CONFIG": "/"}, {}, "config file / is not a file"),
        ({"NAGATHA_LOGGING_FORMAT": "xml"}, {}, "logging.format"),
        ({"NAGATHA_API_MAX_WAIT": "inf"}, {}, "api.max_wait = 'inf' (from env"),
        ({}, {"nagatha.yaml": BILLION_LAUGHS}, "more than 100000 values once its aliases"),
        ({}, {"nagatha.yaml": "root:$6$salt:20228:0: 1\n"}, "unknown section (not a name)"),
        ({"NAGATHA_API_MAX_WAIT": "1e12"}, {}, "less than or equal to 3600"),
        ({}, {"nagatha.yaml": "api: {max_wait: .nan}"}, "finite number"),
        ({"NAGATHA_WORKER_SHUTDOWN_GRACE": "inf"}, {}, "worker.shutdown_grace"),
        ({"NAGATHA_BROKER_CONNECT_TIMEOUT": "1e9"}, {}, "broker.connect_timeout"),
        ({"NAGATHA_RESULTS_SOCKET_TIMEOUT": "nan"}, {}, "results.socket_timeout"),
        # pika and redis-py read these only as a process connects (a crash, or database 0).
        ({"NAGATHA_BROKER_URL": "amqp://h/v?heartbeat=abc"}, {}, "Invalid heartbeat value"),
        ({"NAGATHA_BROKER_URL": "amqp://h/v?hearbeat=5"}, {}, "Unknown URL parameter"),
        ({"NAGATHA_RESULTS_URL": "redis://h:6379/13abc"}, {}, "a database number such as /0"),
        ({"NAGATHA_RESULTS_URL": "redis://h:6379/0?db=x"}, {}, "Invalid value for 'db'"),
        ({"NAGATHA_BRIDGE_RESULT_BACKEND_URL": "redis://h/x"}, {}, "bridge.result_backend_url"),
        ({"NAGATHA_BROKER_URL": "amqps://h/v?ssl_options={bad"}, {}, "ssl_options must be"),
        ({"NAGATHA_RESULTS_URL": "rediss://h/0?ssl_cert_reqs=CERT_REQUIRED"}, {}, "none, optional"),
    ],
)
def test_bad_values_raise_one_line_naming_key_and_source(
    dirs: tuple[Path, Path], env: dict[str, str], files: dict[str, str], needle: str
) -> None:
    home, cwd = dirs
    for name, text in files.items():
        write(cwd / name, text)
    with pytest.raises(ConfigError) as info:
        load_config(env=env, home=home, cwd=cwd)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_urls_pika_and_redis_py_take_are_accepted_as_written(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    env = {
        # pika would open these files: they need not exist where the config is read.
        "NAGATHA_BROKER_URL": "amqps://u:pw@h:5671/v?ssl_options={'ca_certs':'/nowhere/ca.pem'}"
        "&heartbeat=10&connection_attempts=3",
        "NAGATHA_RESULTS_URL": "rediss://h:6380/2?ssl_cert_reqs=required&socket_timeout=3",
    }
    config = load_config(env=env, home=home, cwd=cwd).config
    assert config.broker.url == env["NAGATHA_BROKER_URL"]
    assert config.results.url == env["NAGATHA_RESULTS_URL"]


def test_a_bad_url_error_never_shows_its_password(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    with pytest.raises(ConfigError) as info:
        load_config(env={"NAGATHA_BROKER_URL": "http://u:s3cret-pw@h/"}, home=home, cwd=cwd)
    assert "s3cret-pw" not in str(info.value)


def test_secrets_are_collected_and_masked(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    env = {"NAGATHA_BROKER_URL": "amqp://u:pw123@h:5672/v", "NAGATHA_API_TOKENS": "tok-1"}
    config = load_config(env=env, home=home, cwd=cwd).config
    assert set(secrets_of(config)) == {"pw123", "tok-1"}
    assert mask_url(config.broker.url) == "amqp://u:****@h:5672/v"


def test_secret_query_parameters_and_secrets_in_lists_are_masked_and_redacted(
    dirs: tuple[Path, Path],
) -> None:
    home, cwd = dirs
    (cwd / "nagatha.yaml").write_text(
        "results:\n  url: 'redis://h:6379/0?password=q-s3cr3t-q&db=1'\n"
        "modules:\n  settings:\n    hook: {accounts: [{user: u, password: pw-cccccccc}],"
        " passphrase: pp-dddddddd, auth: au-eeeeeeee, dsn: 'postgres://u:dsn-pw-ffff@h/db',"
        " max_tokens: 5, credentials: {api_key: sk-nested-gggg, extra: [xs-in-list-hhhh]},"
        " matrix: [[{password: deep-list-iiii}]], urls: [['redis://u:url-list-jjjj@h/0']]}\n"
    )
    config = load_config(env={}, home=home, cwd=cwd).config
    assert mask_url(config.results.url) == "redis://h:6379/0?password=****&db=1"
    shown = mask_value("modules.settings", config.modules.settings)["hook"]
    assert shown["accounts"] == [{"user": "u", "password": "****"}]
    assert shown["passphrase"] == shown["auth"] == "****"
    assert shown["dsn"] == "postgres://u:****@h/db" and shown["max_tokens"] == 5
    secrets = set(secrets_of(config))
    assert {"q-s3cr3t-q", "pw-cccccccc", "pp-dddddddd", "au-eeeeeeee", "dsn-pw-ffff"} <= secrets
    assert {"sk-nested-gggg", "xs-in-list-hhhh"} <= secrets  # inside a secret-named mapping
    assert {"deep-list-iiii", "url-list-jjjj"} <= secrets  # in lists of lists
    assert shown["matrix"] == [[{"password": "****"}]]
    assert shown["credentials"] == "****"


def test_a_url_password_with_reserved_characters_is_masked_whole() -> None:
    assert mask_url("amqp://guest:4711#xY@127.0.0.1//") == "amqp://****"
    assert mask_url("redis://:p/w?x@h:6379/0") == "redis://****"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
    assert mask_url("amqp://u:p%23w@h:5672/vh%401") == "amqp://u:****@h:5672/vh%401"
    assert mask_url("amqp://u:p@h:5672/vh@1") == "amqp://u:****@h:5672/vh@1"


def test_reserved_characters_in_a_url_password_fail_without_showing_it(
    dirs: tuple[Path, Path],
) -> None:
    home, cwd = dirs
    with pytest.raises(ConfigError) as info:
        load_config(env={"NAGATHA_BROKER_URL": "amqp://u:s3c#ret@h//"}, home=home, cwd=cwd)
    assert "s3c" not in str(info.value) and "ret@" not in str(info.value)


def test_module_settings_secrets_are_masked_and_redacted(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    (cwd / "nagatha.yaml").write_text(
        "modules:\n  settings:\n    ai: {api_key: sk-live-1, model: m, max_tokens: 512,"
        " clientSecret: cs-secret-3, db: {password: pw-pw-22}, api-key: sk-hyphen-4,"
        " db-password: hunter2hunter2, signing_key: s3cr3t-signing, api_keys: [sk-list-aaaa],"
        " cache_key: name, tokens: 3, headers: {Authorization: Bearer-abc-123456}}\n"
    )
    config = load_config(env={}, home=home, cwd=cwd).config
    shown = mask_value("modules.settings", config.modules.settings)["ai"]
    masked = {key for key, value in shown.items() if value == "****"}
    assert masked == {
        "api_key",
        "clientSecret",
        "api-key",
        "db-password",
        "signing_key",
        "api_keys",
        "cache_key",  # any *key: hiding a harmless value costs nothing
        "tokens",  # as api.tokens
    }
    assert shown["db"] == {"password": "****"}
    assert shown["headers"] == {"Authorization": "****"}
    assert (shown["model"], shown["max_tokens"]) == ("m", 512)
    secrets = set(secrets_of(config))
    expected = {"sk-live-1", "cs-secret-3", "pw-pw-22", "sk-hyphen-4", "hunter2hunter2"}
    assert expected | {"s3cr3t-signing", "sk-list-aaaa", "Bearer-abc-123456"} <= secrets
    assert "name" not in secrets  # too short to redact from every log line


def test_nested_env_settings_merge_into_the_files_settings(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    (cwd / "nagatha.yaml").write_text(
        "modules:\n  settings:\n    ai: {base_url: u, model: m}\n    other: {x: 1}\n"
    )
    env = {"NAGATHA_MODULES__SETTINGS__AI__API_KEY": "12345678"}
    settings = load_config(env=env, home=home, cwd=cwd).config.modules.settings
    assert settings == {
        "ai": {"base_url": "u", "model": "m", "api_key": "12345678"},  # a secret stays text
        "other": {"x": 1},
    }


def test_module_settings_from_env_json_and_nested_keys(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    env = {
        "NAGATHA_MODULES__SETTINGS__ECHO_BOT__ENABLED": "false",
        "NAGATHA_MODULES__SETTINGS__AI__API_KEY": "sk-env",
        "NAGATHA_MODULES__SETTINGS__AI__TASKS__CHAT__MAX_RETRIES": "2",
    }
    settings = load_config(env=env, home=home, cwd=cwd).config.modules.settings
    assert settings == {
        "echo_bot": {"enabled": False},
        "ai": {"api_key": "sk-env", "tasks": {"chat": {"max_retries": 2}}},
    }
    as_json = {"NAGATHA_MODULES_SETTINGS": '{"ai": {"api_key": "sk-json"}}'}
    config = load_config(env=as_json, home=home, cwd=cwd).config
    assert config.modules.settings == {"ai": {"api_key": "sk-json"}}


def test_env_json_settings_merge_with_the_file_and_nested_keys_go_on_top(
    dirs: tuple[Path, Path],
) -> None:
    home, cwd = dirs
    (cwd / "nagatha.yaml").write_text(
        "modules:\n  settings:\n    ai: {base_url: u, model: m}\n    other: {x: 1}\n"
    )
    env = {
        "NAGATHA_MODULES_SETTINGS": '{"ai": {"model": "m2", "tasks": {"chat": {"x": 1}}}}',
        "NAGATHA_MODULES__SETTINGS__AI__TASKS__CHAT__MAX_RETRIES": "3",
    }
    loaded = load_config(env=env, home=home, cwd=cwd)
    assert loaded.config.modules.settings == {
        "ai": {"base_url": "u", "model": "m2", "tasks": {"chat": {"x": 1, "max_retries": 3}}},
        "other": {"x": 1},
    }
    assert loaded.sources["modules.settings"] == (
        "./nagatha.yaml + env NAGATHA_MODULES_SETTINGS"
        " + env NAGATHA_MODULES__SETTINGS__AI__TASKS__CHAT__MAX_RETRIES"
    )


def test_module_settings_of_two_files_merge_key_by_key(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    home_file = write(home / ".nagatha" / "config.yaml", "modules: {settings: {ai: {a: 1}}}\n")
    write(cwd / "nagatha.yaml", "modules: {settings: {ai: {b: 2}, echo_bot: {c: 3}}}\napi: {}\n")
    loaded = load_config(env={}, home=home, cwd=cwd)
    assert loaded.config.modules.settings == {"ai": {"a": 1, "b": 2}, "echo_bot": {"c": 3}}
    assert loaded.sources["modules.settings"] == f"{home_file} + ./nagatha.yaml"
    assert loaded.sources["api.port"] == "default"


def test_a_bad_module_settings_value_is_never_echoed(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    with pytest.raises(ConfigError) as info:
        env = {"NAGATHA_MODULES_SETTINGS": '["sk-secret-in-a-list"]'}
        load_config(env=env, home=home, cwd=cwd)
    assert "modules.settings" in str(info.value)
    assert "sk-secret" not in str(info.value)


def test_a_section_with_every_key_commented_out_is_empty(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    (cwd / "nagatha.yaml").write_text("api:\n  # port: 9000\n")
    assert load_config(env={}, home=home, cwd=cwd).config.api.port == 8000
