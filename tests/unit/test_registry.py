"""Registry: module discovery and isolation, task options, kwargs binding, submit."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from dramatiq.middleware import TimeLimitExceeded

from nagatha import registry as registry_module
from nagatha.config import FrameworkConfig
from nagatha.errors import InvalidArguments, TaskWaitTimeout, UnknownTask
from nagatha.hub import create_hub
from nagatha.registry import TaskRegistry
from nagatha.types import TaskStatus

SHIPPED = str(Path(__file__).resolve().parents[2] / "modules")


def make_config(*paths: str, **modules: object) -> FrameworkConfig:
    return FrameworkConfig.model_validate(
        {
            "broker": {"url": "memory://"},
            "results": {"url": "memory://"},
            "modules": {"paths": list(paths), **modules},
        }
    )


def module(root: Path, name: str, body: str, config: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(textwrap.dedent(body), encoding="utf-8")
    if config is not None:
        (folder / "config.yaml").write_text(config, encoding="utf-8")
    return folder


GOOD = '''
    """A good module."""
    __version__ = "2.3.4"
    from .helper import double

    def twice(x: int, scale: int = 2):
        """Multiply."""
        return double(x) * scale // 2

    def register_tasks(registry):
        registry.register_task("good", "twice", twice)
'''


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "mods"
    good = module(root, "good", GOOD)
    (good / "helper.py").write_text("def double(x):\n    return 2 * x\n")
    module(root, "broken_import", "import does_not_exist_anywhere\n")
    module(root, "no_register", '"""No hook."""\n')
    module(
        root,
        "raises",
        "def register_tasks(registry):\n    raise RuntimeError('boom in register')\n",
    )
    module(
        root,
        "duplicate",
        """
        def t():
            pass
        def register_tasks(registry):
            registry.register_task("duplicate", "t", t)
            registry.register_task("duplicate", "t", t)
    """,
    )
    module(root, "exits_on_import", "import sys\nsys.exit('needs package foo')\n")
    module(
        root,
        "exits_in_register",
        "def register_tasks(registry):\n    raise SystemExit(3)\n",
    )
    module(root, "_private", "raise SystemExit('must never be imported')\n")
    module(root, ".hidden", "raise SystemExit('must never be imported')\n")
    module(
        root,
        "off",
        "def register_tasks(registry):\n    raise RuntimeError('disabled')\n",
        config="enabled: false\n",
    )
    ok = "def register_tasks(registry):\n    pass\n"
    latin1 = module(root, "latin1_config", ok)
    (latin1 / "config.yaml").write_bytes(b"api_key: caf\xe9\n")
    module(root, "bad_yaml", ok, config="a: [1,\nb: 2\n")
    module(root, "vague_enabled", ok, config="enabled: 'false'\n")
    return root


def test_discovery_loads_good_modules_and_reports_each_broken_one(tree: Path) -> None:
    hub = create_hub(make_config(str(tree)))
    modules = {m.name: m for m in hub.list_modules()}
    assert "_private" not in modules and ".hidden" not in modules
    assert modules["good"].status == "loaded"
    assert modules["good"].version == "2.3.4"
    assert modules["good"].description == "A good module."
    assert modules["good"].tasks == ["good.twice"]
    assert modules["off"].status == "disabled"
    failures = {name: m.error or "" for name, m in modules.items() if m.status == "failed"}
    assert set(failures) == {
        "broken_import",
        "no_register",
        "raises",
        "duplicate",
        "exits_on_import",
        "exits_in_register",
        "latin1_config",
        "bad_yaml",
        "vague_enabled",
    }
    assert failures["latin1_config"] == "config.yaml is not UTF-8 text (byte 12): save it as UTF-8"
    assert failures["bad_yaml"] == "invalid YAML in config.yaml at line 3: fix the file's syntax"
    assert failures["vague_enabled"] == "its setting 'enabled' must be true or false, not 'false'"
    assert failures["exits_on_import"] == "import failed: SystemExit: needs package foo"
    assert failures["exits_in_register"] == "register_tasks raised SystemExit: 3"
    assert "does_not_exist_anywhere" in failures["broken_import"]
    assert "register_tasks" in failures["no_register"]
    assert "boom in register" in failures["raises"]
    assert "registered twice" in failures["duplicate"]
    # A failed module leaves no task (nor Dramatiq actor) behind.
    assert [t.name for t in hub.list_tasks()] == ["good.twice"]
    assert "duplicate.t" not in hub.broker.actors


def test_task_parameters_come_from_the_signature(tree: Path) -> None:
    hub = create_hub(make_config(str(tree)))
    (info,) = hub.list_tasks()
    assert info.description == "Multiply."
    params = [(p.name, p.required, p.default, p.annotation) for p in info.parameters]
    assert params == [("x", True, None, "int"), ("scale", False, 2, "int")]


@pytest.mark.parametrize(
    ("kwargs", "unknown", "missing"),
    [({"y": 1}, ["y"], ["x"]), ({"x": 1, "bogus": 2}, ["bogus"], []), ({}, [], ["x"])],
)
def test_kwargs_that_do_not_bind_are_refused_before_anything_is_enqueued(
    tree: Path, kwargs: dict[str, int], unknown: list[str], missing: list[str]
) -> None:
    hub = create_hub(make_config(str(tree)))
    with pytest.raises(InvalidArguments) as info:
        hub.submit("good.twice", kwargs=kwargs)
    assert (info.value.unknown, info.value.missing) == (unknown, missing)
    assert hub.broker.queues["default"].qsize() == 0


def test_a_task_of_a_failed_module_is_refused_with_the_modules_error(tree: Path) -> None:
    hub = create_hub(make_config(str(tree)))
    with pytest.raises(UnknownTask, match="its module failed to load: .*boom in register"):
        hub.submit("raises.anything")


def test_a_wait_that_ends_while_pending_asks_whether_a_worker_runs(tree: Path) -> None:
    hub = create_hub(make_config(str(tree)))  # no worker started
    record = hub.submit("good.twice", kwargs={"x": 1})
    with pytest.raises(TaskWaitTimeout, match=r"still pending after 0.1s \(is a worker running"):
        hub.wait_for(record.task_id, 0.1, strict=True)


def test_unknown_task_is_refused(tree: Path) -> None:
    hub = create_hub(make_config(str(tree)))
    with pytest.raises(UnknownTask):
        hub.submit("good.nope")


def test_submit_writes_pending_before_enqueue(tree: Path) -> None:
    hub = create_hub(make_config(str(tree)))
    record = hub.submit("good.twice", kwargs={"x": 3})
    assert record.status is TaskStatus.PENDING
    assert hub.get_task_status(record.task_id).status is TaskStatus.PENDING
    assert hub.broker.queues["default"].qsize() == 1


def test_config_overrides_task_options_over_code(tmp_path: Path) -> None:
    root = tmp_path / "mods"
    module(
        root,
        "opt",
        """
        def t():
            pass
        def register_tasks(registry):
            registry.register_task("opt", "t", t, max_retries=7, queue="from_code")
    """,
        config="queue: from_module\ntasks:\n  t: {max_retries: 1}\n",
    )
    hub = create_hub(
        make_config(str(root), settings={"opt": {"tasks": {"t": {"queue": "from_hub"}}}})
    )
    spec = hub.get_task("opt.t")
    assert spec.queue == "from_hub"
    assert spec.actor.options["max_retries"] == 1
    assert hub.module_config("opt")["queue"] == "from_module"


def test_settings_for_a_task_the_module_does_not_register_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "mods"
    module(
        root,
        "opt",
        """
        def t():
            pass
        def register_tasks(registry):
            registry.register_task("opt", "t", t)
    """,
        config="tasks:\n  t: {max_retries: 1}\n  tt: {max_retries: 2}\n",
    )
    with caplog.at_level("WARNING", logger="nagatha.registry"):
        hub = create_hub(make_config(str(root)))
    assert hub.get_task("opt.t").actor.options["max_retries"] == 1
    assert "module opt: settings for tasks it does not register: tt (a typo?)" in caplog.text


def test_what_a_module_prints_goes_to_stderr_not_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "mods"
    module(
        root,
        "chatty",
        """
        print("importing chatty")
        def t():
            pass
        def register_tasks(registry):
            print("registering chatty")
            registry.register_task("chatty", "t", t)
    """,
    )
    create_hub(make_config(str(root)))
    out, err = capsys.readouterr()
    assert out == "" and "importing chatty" in err and "registering chatty" in err


def test_a_module_slow_to_load_is_named_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(registry_module, "SLOW_LOAD_S", 0.01)
    root = tmp_path / "mods"
    module(
        root,
        "sluggish",
        """
        import threading
        threading.Event().wait(1.0)  # an import that blocks (a network call, a lock)
        def register_tasks(registry):
            pass
    """,
    )
    with caplog.at_level("WARNING", logger="nagatha.registry"):
        create_hub(make_config(str(root)))
    assert "module sluggish: still loading after 0.01s" in caplog.text


@pytest.mark.parametrize("queue", ["celery", "x.DQ", "bad queue", "1abc"])
def test_invalid_or_celery_queue_names_fail_the_module(tmp_path: Path, queue: str) -> None:
    root = tmp_path / "mods"
    module(
        root,
        "q",
        f"""
        def t():
            pass
        def register_tasks(registry):
            registry.register_task("q", "t", t, queue={queue!r})
    """,
    )
    (meta,) = create_hub(make_config(str(root))).list_modules()
    assert meta.status == "failed"
    assert "invalid queue name" in (meta.error or "")


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ('{"max_retries": "2"}', "option max_retries must be a whole number, got '2'"),
        ('{"time_limit": "10s"}', "option time_limit must be a whole number, got '10s'"),
        ('{"time_limit": 0}', "option time_limit must be >= 1, got 0"),
        ('{"min_backoff": -5}', "option min_backoff must be >= 0, got -5"),
        ('{"max_age": True}', "option max_age must be a whole number, got True"),
        ('{"priority": 1.5}', "option priority must be a whole number, got 1.5"),
        ('{"throws": "ValueError"}', "option throws must be an exception class"),
        ('{"retry_when": 3}', "option retry_when must be callable"),
        ('{"max_backoff": 1_500_001}', "option max_backoff must be <= 1500000 ms"),
    ],
)
def test_option_values_of_the_wrong_type_fail_the_module_at_load(
    tmp_path: Path, options: str, expected: str
) -> None:
    root = tmp_path / "mods"
    module(
        root,
        "opts",
        f"""
        def t():
            pass
        def register_tasks(registry):
            registry.register_task("opts", "t", t, **{options})
    """,
    )
    (meta,) = create_hub(make_config(str(root))).list_modules()
    assert meta.status == "failed"
    assert expected in (meta.error or "")


def test_option_types_from_config_yaml_are_checked_too(tmp_path: Path) -> None:
    root = tmp_path / "mods"
    module(
        root,
        "yamlopts",
        """
        def t():
            pass
        def register_tasks(registry):
            registry.register_task("yamlopts", "t", t)
    """,
        config='tasks:\n  t: {max_retries: "2"}\n',
    )
    (meta,) = create_hub(make_config(str(root))).list_modules()
    assert meta.status == "failed"
    assert "option max_retries must be a whole number, got '2'" in (meta.error or "")


def test_a_time_limit_stays_final_when_a_module_passes_its_own_throws(tmp_path: Path) -> None:
    root = tmp_path / "mods"
    module(
        root,
        "thr",
        """
        def t():
            pass
        def register_tasks(registry):
            registry.register_task("thr", "t", t, throws=KeyError)
    """,
    )
    throws = create_hub(make_config(str(root))).get_task("thr.t").actor.options["throws"]
    assert throws == (TimeLimitExceeded, KeyError)


def test_an_infinite_time_limit_is_dramatiqs_no_limit(tmp_path: Path) -> None:
    root = tmp_path / "mods"
    module(
        root,
        "endless",
        """
        def t():
            pass
        def register_tasks(registry):
            registry.register_task("endless", "t", t, time_limit=float("inf"))
    """,
    )
    hub = create_hub(make_config(str(root)))
    assert hub.get_task("endless.t").actor.options["time_limit"] == float("inf")


def test_a_module_shadowed_by_an_earlier_path_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    body = """
        def t():
            return {which!r}
        def register_tasks(registry):
            registry.register_task("twin", "t", t)
    """
    module(first, "twin", body.format(which="first"))
    module(second, "twin", body.format(which="second"))
    hub = create_hub(make_config(str(first), str(second)))
    assert hub.get_task("twin.t").func() == "first"
    assert f"module folder {second / 'twin'} ignored: module twin was found first in" in (
        caplog.text
    )


def test_a_module_cannot_register_under_another_modules_name(tmp_path: Path) -> None:
    root = tmp_path / "mods"
    module(
        root,
        "sneaky",
        """
        def t():
            pass
        def register_tasks(registry):
            registry.register_task("echo_bot", "echo", t)
    """,
    )
    (meta,) = create_hub(make_config(str(root))).list_modules()
    assert meta.status == "failed"


def test_shipped_modules_load_and_heartbeat() -> None:
    hub: TaskRegistry = create_hub(make_config(SHIPPED))
    names = {t.name for t in hub.list_tasks()}
    assert {
        "echo_bot.echo",
        "diagnostics.add",
        "diagnostics.fail",
        "diagnostics.sleep",
        "diagnostics.noop",
    } <= names
    assert hub.heartbeats(5)["echo_bot"] == {"status": "ok"}


def test_a_modules_path_that_is_no_folder_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "modlues"  # a typo
    with caplog.at_level("WARNING", logger="nagatha"):
        hub = create_hub(make_config(str(missing), SHIPPED))
    assert f"modules path {missing} is not a folder" in caplog.text
    assert "echo_bot.echo" in {t.name for t in hub.list_tasks()}


def test_a_heartbeat_that_hangs_is_a_timeout_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import types

    hub: TaskRegistry = create_hub(make_config(SHIPPED))
    release = threading.Event()
    slow = types.SimpleNamespace(heartbeat=lambda: release.wait(30) and {"status": "late"})
    monkeypatch.setitem(hub._module_objects, "slow", slow)
    try:
        beats = hub.heartbeats(2)  # the healthy ones answer in time on a loaded machine too
        assert beats["slow"] == {"status": "timeout", "detail": "no answer within 2s"}
        assert beats["echo_bot"] == {"status": "ok"}
    finally:
        release.set()
