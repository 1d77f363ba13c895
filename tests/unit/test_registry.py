"""Registry: module discovery and isolation, task options, kwargs binding, submit."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nagatha.config import FrameworkConfig
from nagatha.errors import InvalidArguments, UnknownTask
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
    module(root, "_private", "raise SystemExit('must never be imported')\n")
    module(root, ".hidden", "raise SystemExit('must never be imported')\n")
    module(
        root,
        "off",
        "def register_tasks(registry):\n    raise RuntimeError('disabled')\n",
        config="enabled: false\n",
    )
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
    assert set(failures) == {"broken_import", "no_register", "raises", "duplicate"}
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
    assert hub.heartbeats()["echo_bot"] == {"status": "ok"}
