"""The deployment files keep the contract other services rely on, without a Docker engine.

docker-compose.yml is checked against the Compose Specification JSON schema (a copy in
``tests/unit/schemas/``, source and license in its README) after a small ``${VAR...}``
resolver has filled in its variables, then for the shape DESIGN §1 and §7 promise: service
names, URLs, ports, health checks, volumes, start order and no secret written into the file.
The Kubernetes base, the Dockerfile, ``.dockerignore`` and ``.env.example`` get structural
checks. One test marked ``docker`` builds the image and starts the stack; it skips, saying
why, wherever no Docker engine answers.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from nagatha.config import ApiConfig
from nagatha.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "schemas" / "compose-spec.json"
DOCKERFILE = ROOT / "ops" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
K8S_DIR = ROOT / "ops" / "k8s"

HUB_SERVICES = ("api", "worker", "bridge")
ALL_SERVICES = {*HUB_SERVICES, "broker", "redis"}

# The hub's built-in defaults (DESIGN §7); compose only swaps localhost for a service name.
DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672//"
DEFAULT_MAX_WAIT = ApiConfig().max_wait
DEFAULT_RESULTS_URL = "redis://localhost:6379/0"
DEFAULT_API_PORT = 8000
DEFAULT_RESULTS_TTL = 86_400

# What `docker compose` would see from a shell that sets only the required token.
TEST_ENV = {"NAGATHA_API_TOKENS": "test-token"}

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    """A ``${VAR:?message}`` (or ``${VAR?message}``) whose variable is not set."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Resolve compose variables in one string, as ``docker compose`` does.

    Supports ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}`` and ``${VAR+alt}`` (not nesting).
    """

    def resolve(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        value, op, arg = env.get(name), match["op"], match["arg"] or ""
        unset_or_empty = not value if op and op.startswith(":") else value is None
        if op in (":-", "-"):
            return arg if unset_or_empty else str(value)
        if op in (":?", "?"):
            if unset_or_empty:
                raise MissingVariable(f"{name}: {arg}")
            return str(value)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return value or ""

    return _VARIABLE.sub(resolve, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """Resolve variables in every string value of a parsed YAML document."""
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def variables_in(text: str) -> set[str]:
    """Names of the variables a text reads (``$$`` escapes excluded)."""
    return {m["braced"] or m["bare"] for m in _VARIABLE.finditer(text) if not m["escaped"]}


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def raw_compose(compose_text: str) -> dict[str, Any]:
    """docker-compose.yml as written (anchors merged, ``${...}`` untouched)."""
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any]) -> dict[str, Any]:
    """docker-compose.yml as ``docker compose`` sees it with only the token set."""
    return interpolate_tree(raw_compose, TEST_ENV)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def environment_of(service: Mapping[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def raw_compose_broker_ports() -> list[Any]:
    """The broker's ports as written, ``${...}`` untouched."""
    return list(
        yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]["broker"]["ports"]
    )


def published(port: str | int | Mapping[str, Any]) -> tuple[str | None, int, int]:
    """``(host_ip, published, target)`` of a short-syntax or long-syntax port."""
    if isinstance(port, Mapping):
        return port.get("host_ip"), int(port["published"]), int(port["target"])
    parts = str(port).split("/")[0].split(":")
    if len(parts) == 3:
        return parts[0], int(parts[1]), int(parts[2])
    if len(parts) == 2:
        return None, int(parts[0]), int(parts[1])
    raise AssertionError(f"port {port!r} is not published on the host")


def seconds(duration: str) -> float:
    """Seconds in a compose duration such as ``1m30s`` or ``45s``."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    pieces = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert pieces and "".join(n + u for n, u in pieces) == duration, duration
    return sum(float(n) * units[u] for n, u in pieces)


# --- the interpolation helper itself ----------------------------------------------------------


def test_the_resolver_follows_compose_interpolation_rules() -> None:
    env = {"SET": "value", "EMPTY": ""}

    assert interpolate("${SET:-d} ${EMPTY:-d} ${UNSET:-d}", env) == "value d d"
    assert interpolate("${EMPTY-d}|${UNSET-d}", env) == "|d"
    assert interpolate("$SET ${SET} $$SET ${UNSET}", env) == "value value $SET "
    assert interpolate("${SET:+alt}|${EMPTY:+alt}", env) == "alt|"
    with pytest.raises(MissingVariable, match="EMPTY: say why"):
        interpolate("${EMPTY:?say why}", env)


# --- docker-compose.yml -----------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_specification_schema(
    compose: dict[str, Any],
) -> None:
    # Given the Compose Specification schema shipped with the tests
    assert COMPOSE_SCHEMA.is_file(), f"missing {COMPOSE_SCHEMA} (see its README)"
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)

    # When the interpolated compose file is validated
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))

    # Then it has no error
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )


def test_compose_refuses_to_start_without_api_tokens(raw_compose: dict[str, Any]) -> None:
    token = raw_compose["services"]["api"]["environment"]["NAGATHA_API_TOKENS"]

    assert re.fullmatch(r"\$\{NAGATHA_API_TOKENS:\?[^}]+\}", token), token
    with pytest.raises(MissingVariable, match="NAGATHA_API_TOKENS"):
        interpolate_tree(raw_compose, {})
    with pytest.raises(MissingVariable, match="NAGATHA_API_TOKENS"):
        interpolate_tree(raw_compose, {"NAGATHA_API_TOKENS": ""})


def test_compose_defines_exactly_the_services_the_contract_names(
    services: dict[str, Any],
) -> None:
    assert set(services) == ALL_SERVICES


def test_hub_services_share_the_x_nagatha_settings(
    compose_text: str, compose: dict[str, Any], services: dict[str, Any]
) -> None:
    shared = compose["x-nagatha"]
    assert re.search(r"^x-nagatha: &nagatha\b", compose_text, re.MULTILINE)

    for name in HUB_SERVICES:
        service = services[name]
        for key in ("image", "build", "restart", "depends_on"):
            assert service[key] == shared[key], f"{name}.{key} differs from x-nagatha"
        env = environment_of(service)
        for key, value in shared["environment"].items():
            assert env.get(key) == value, f"{name} lacks the shared {key}"


def test_every_hub_service_finds_rabbitmq_and_redis_by_service_name(
    services: dict[str, Any],
) -> None:
    default_broker = urlsplit(DEFAULT_BROKER_URL)
    for name in HUB_SERVICES:
        env = environment_of(services[name])

        broker = urlsplit(env["NAGATHA_BROKER_URL"])
        assert (broker.scheme, broker.hostname, broker.port, broker.path) == (
            default_broker.scheme,
            "broker",
            default_broker.port,
            default_broker.path,
        ), f"{name}: {env['NAGATHA_BROKER_URL']}"
        # Defaults give the hub's own default credentials, the ones RabbitMQ is created with.
        assert (broker.username, broker.password) == ("guest", "guest")

        assert env["NAGATHA_RESULTS_URL"] == DEFAULT_RESULTS_URL.replace("localhost", "redis")
        assert int(env["NAGATHA_RESULTS_TTL"]) == DEFAULT_RESULTS_TTL
        assert env["NAGATHA_MODULES_PATHS"] == "/app/modules"


def test_rabbitmq_is_created_with_the_user_the_hub_connects_as(
    raw_compose: dict[str, Any],
) -> None:
    broker_env = environment_of(raw_compose["services"]["broker"])
    url = environment_of(raw_compose["services"]["worker"])["NAGATHA_BROKER_URL"]

    assert broker_env["RABBITMQ_DEFAULT_USER"] in url
    assert broker_env["RABBITMQ_DEFAULT_PASS"] in url
    custom = interpolate_tree(
        raw_compose, {**TEST_ENV, "RABBITMQ_DEFAULT_USER": "hub", "RABBITMQ_DEFAULT_PASS": "s3"}
    )
    assert urlsplit(custom["services"]["api"]["environment"]["NAGATHA_BROKER_URL"]).netloc == (
        "hub:s3@broker:5672"
    )


def test_the_compose_defaults_follow_the_hub_config_defaults() -> None:
    from nagatha.config import FrameworkConfig

    config = FrameworkConfig()

    assert config.broker.url == DEFAULT_BROKER_URL
    assert config.results.url == DEFAULT_RESULTS_URL
    assert config.results.ttl == DEFAULT_RESULTS_TTL
    assert config.api.port == DEFAULT_API_PORT


def test_hub_services_wait_for_healthy_broker_and_redis_and_come_back_after_restarts(
    services: dict[str, Any],
) -> None:
    for name in HUB_SERVICES:
        service = services[name]
        assert service["depends_on"] == {
            "broker": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }, name
    # A hub process stopped by SIGTERM exits 0: on-failure would leave it down after Docker
    # itself restarts (an upgrade, a reboot) while broker and redis come back.
    for name in (*HUB_SERVICES, "broker", "redis"):
        assert services[name]["restart"] in ("always", "unless-stopped"), name


def test_broker_redis_and_api_have_health_checks(services: dict[str, Any]) -> None:
    for name in ("api", "broker", "redis"):
        check = services[name]["healthcheck"]
        assert not check.get("disable"), name
        assert check["test"][0] == "CMD", f"{name}: use exec form, not a shell"
        assert seconds(check["interval"]) > 0 and seconds(check["timeout"]) > 0

    api_check = " ".join(services["api"]["healthcheck"]["test"])
    assert f"127.0.0.1:{DEFAULT_API_PORT}/ping" in api_check
    assert "curl" not in api_check and "wget" not in api_check
    # Workers and bridges serve no HTTP: the image's /ping check must not mark them unhealthy.
    for name in ("worker", "bridge"):
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_published_ports_match_the_contract(
    services: dict[str, Any], raw_compose: dict[str, Any]
) -> None:
    api_ports = [published(p) for p in services["api"]["ports"]]
    assert api_ports == [(None, DEFAULT_API_PORT, DEFAULT_API_PORT)]
    command = services["api"]["command"]
    assert command[:3] == ["serve", "--host", "0.0.0.0"]
    assert command[command.index("--port") + 1] == str(DEFAULT_API_PORT)

    broker_ports = {
        target: (ip, host) for ip, host, target in map(published, services["broker"]["ports"])
    }
    # guest/guest by default, and Docker's published ports bypass host firewalls: AMQP is on
    # this machine only unless BROKER_PUBLISH_ADDRESS opens it.
    assert broker_ports[5672] == ("127.0.0.1", 5672)
    written = raw_compose["services"]["broker"]["ports"]
    opened = interpolate_tree(written, {"BROKER_PUBLISH_ADDRESS": "0.0.0.0"})
    assert published(opened[0])[0] == "0.0.0.0"
    assert broker_ports.get(15672, ("127.0.0.1", 15672))[0] == "127.0.0.1"

    # Redis has no password in compose: never published beyond this machine.
    for ip, _, _ in map(published, services["redis"].get("ports", [])):
        assert ip == "127.0.0.1"


def test_workers_scale_with_no_fixed_name_or_port_and_stop_gracefully(
    services: dict[str, Any],
) -> None:
    worker = services["worker"]

    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"][0] == "worker"
    grace = float(environment_of(worker)["NAGATHA_WORKER_SHUTDOWN_GRACE"])
    assert seconds(worker["stop_grace_period"]) >= grace + 15  # supervisor: grace + 10 + 5
    assert services["bridge"]["command"][0] == "bridge"
    assert environment_of(services["bridge"])["NAGATHA_BRIDGE_QUEUES"] == "celery"
    for name in HUB_SERVICES:
        assert "container_name" not in services[name], name


def test_broker_and_redis_keep_their_data_in_named_volumes(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    named = set(compose["volumes"])

    def volume_sources(service: Mapping[str, Any]) -> dict[str, str]:
        mounts = {}
        for volume in service["volumes"]:
            if isinstance(volume, str):
                source, target = volume.split(":")[:2]
            else:
                source, target = volume["source"], volume["target"]
            mounts[target] = source
        return mounts

    assert volume_sources(services["broker"])["/var/lib/rabbitmq"] in named
    assert volume_sources(services["redis"])["/data"] in named
    # RabbitMQ's data directory is per node name, i.e. per hostname: keep it fixed.
    assert services["broker"]["hostname"] == "broker"
    assert services["broker"]["image"].startswith("rabbitmq:")
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"


def test_compose_writes_no_secret_literally(raw_compose: dict[str, Any]) -> None:
    secret_name = re.compile(r"TOKEN|PASS|SECRET|API_KEY|CREDENTIAL", re.IGNORECASE)
    variable = r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}"

    for name, service in raw_compose["services"].items():
        for key, value in environment_of(service).items():
            if secret_name.search(key):
                # Either passed through from the environment or a ${VAR...} reference.
                assert value is None or re.fullmatch(variable, str(value)), f"{name}.{key}"
            userinfo = re.match(r"[a-z]+://([^@/]*)@", str(value))
            if userinfo:
                assert re.fullmatch(f"{variable}:{variable}", userinfo[1]), (
                    f"{name}.{key} has credentials written into the URL"
                )


def test_env_example_documents_every_variable_compose_reads(
    raw_compose: dict[str, Any], compose_text: str
) -> None:
    # Given every variable docker-compose.yml interpolates or passes through
    read = variables_in(compose_text)
    for service in raw_compose["services"].values():
        read |= {k for k, v in environment_of(service).items() if v is None}

    # When .env.example is read (commented-out assignments count: they are optional)
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    assignment = re.compile(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)")
    documented = {}
    for number, line in enumerate(lines):
        if match := assignment.fullmatch(line.strip()):
            documented[match[1]] = number

    # Then each is there, under a comment that explains it (or its group of settings)
    assert read - set(documented) == set()
    for name, number in documented.items():
        above = number - 1
        while above >= 0 and assignment.fullmatch(lines[above].strip()):
            above -= 1
        assert above >= 0 and lines[above].startswith("# "), f"{name} has no comment above it"
    assert re.search(r"^NAGATHA_API_TOKENS=$", "\n".join(lines), re.MULTILINE), (
        ".env.example must not carry a usable token"
    )


# --- the image --------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    pairs = []
    for entry in logical:
        instruction, _, arguments = entry.partition(" ")
        pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    start = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[start:]


def exec_form(arguments: str) -> list[str]:
    """The JSON array of an exec-form instruction (fails on shell form)."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        raise AssertionError(f"not exec form: {arguments}") from None
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def test_dockerfile_builds_from_slim_python_and_caches_dependencies() -> None:
    instructions = dockerfile_instructions()
    for name, arguments in instructions:
        if name == "FROM":
            assert re.match(r"python:\S*-slim", arguments), arguments

    def first(predicate: Any) -> int:
        return next(i for i, pair in enumerate(instructions) if predicate(*pair))

    copy_pyproject = first(lambda n, a: n == "COPY" and "pyproject.toml" in a)
    install_deps = first(lambda n, a: n == "RUN" and "pip install" in a)
    copy_source = first(lambda n, a: n == "COPY" and a.split()[0] in ("nagatha", "."))
    # Dependencies are installed before the source arrives, so source edits keep that layer.
    assert copy_pyproject < install_deps < copy_source
    stage = final_stage()
    assert any(n == "COPY" and a.split()[0] == "modules" for n, a in stage)
    assert any(n == "ENV" and "NAGATHA_MODULES_PATHS=/app/modules" in a for n, a in stage)


def test_image_runs_as_non_root_with_exec_form_and_a_signal_forwarding_pid_1() -> None:
    stage = final_stage()

    users = [a for n, a in stage if n == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    assert user.isdigit(), "a numeric USER lets Kubernetes verify runAsNonRoot"

    entrypoint = exec_form(next(a for n, a in stage if n == "ENTRYPOINT"))
    command = exec_form(next(a for n, a in stage if n == "CMD"))
    assert entrypoint[0] == "tini" and "nagatha" in entrypoint
    assert command[:1] == ["serve"]
    assert command[command.index("--port") + 1] == str(DEFAULT_API_PORT)
    assert any(n == "RUN" and "tini" in a for n, a in stage), "tini is not installed"


def test_image_health_check_probes_ping_without_curl() -> None:
    checks = [a for n, a in final_stage() if n == "HEALTHCHECK"]
    assert len(checks) == 1
    options, _, command = checks[0].partition("CMD ")

    probe = exec_form(command)
    assert probe[:2] == ["python", "-c"]
    assert f"http://127.0.0.1:{DEFAULT_API_PORT}/ping" in probe[2]
    assert "--timeout=" in options and "--interval=" in options
    compile(probe[2], "<healthcheck>", "exec")


def test_dockerignore_keeps_secrets_out_and_the_sources_in() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }

    assert {".git", ".env", "tests"} <= patterns
    for needed in ("pyproject.toml", "README.md", "nagatha", "bridge", "modules"):
        assert needed not in patterns, f"{needed} is needed by the image build"


# --- Kubernetes -------------------------------------------------------------------------------


def k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S_DIR.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(document, dict):
                yield path, document


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_documents() if doc.get("kind") == kind]


def test_every_kubernetes_file_parses_and_is_listed_by_a_kustomization() -> None:
    files = {p for p in K8S_DIR.rglob("*") if p.is_file() and p.suffix in (".yaml", ".env")}
    kustomizations = [p for p in files if p.name == "kustomization.yaml"]
    assert K8S_DIR / "kustomization.yaml" in kustomizations

    listed: set[Path] = set()
    for path in kustomizations:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        entries = [*spec.get("resources", []), *spec.get("components", [])]
        entries += [patch["path"] for patch in spec.get("patches", []) if "path" in patch]
        for generator in (*spec.get("configMapGenerator", []), *spec.get("secretGenerator", [])):
            entries += [*generator.get("envs", []), *generator.get("files", [])]
        for entry in entries:
            target = (path.parent / entry.split("=")[-1]).resolve()
            assert target.exists(), f"{path.name} lists missing {entry}"
            if target.is_file():
                listed.add(target)
    for path in files - set(kustomizations):
        assert path.resolve() in listed, f"{path.relative_to(ROOT)} is in no kustomization"
        if path.suffix == ".yaml":
            assert list(yaml.safe_load_all(path.read_text(encoding="utf-8")))


def test_deployments_for_api_worker_and_bridge_have_probes_and_resources() -> None:
    deployments = {d["metadata"]["name"]: d for d in k8s_objects("Deployment")}
    assert set(deployments) == {f"nagatha-{name}" for name in HUB_SERVICES}

    for name, deployment in deployments.items():
        assert "namespace" not in deployment["metadata"], f"{name} must stay namespace-agnostic"
        spec = deployment["spec"]
        template = spec["template"]
        selector = spec["selector"]["matchLabels"]
        assert selector.items() <= template["metadata"]["labels"].items(), name
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        # Service links would set NAGATHA_API_PORT=tcp://... from the Service nagatha-api.
        assert pod["enableServiceLinks"] is False, name
        for container in pod["containers"]:
            assert container["image"] == "nagatha", name
            for probe in ("readinessProbe", "livenessProbe"):
                assert container.get(probe), f"{name} has no {probe}"
            requests = container["resources"]["requests"]
            limits = container["resources"]["limits"]
            assert {"cpu", "memory"} <= requests.keys() and "memory" in limits, name
            refs = {
                next(iter(source)): source[next(iter(source))]["name"]
                for source in container["envFrom"]
            }
            assert refs == {"configMapRef": "nagatha-config", "secretRef": "nagatha-secrets"}
            for probe in ("readinessProbe", "livenessProbe"):
                command = container[probe].get("exec", {}).get("command")
                if command:
                    assert command[:2] == ["python", "-c"]
                    compile(command[2], f"<{name} {probe}>", "exec")

    api = deployments["nagatha-api"]["spec"]["template"]["spec"]["containers"][0]
    # Readiness on /ping: in an outage the API stays routed and answers its JSON 503 (DESIGN
    # section 9) rather than leaving the Service empty.
    assert api["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert api["livenessProbe"]["httpGet"]["path"] == "/ping"
    liveness = api["livenessProbe"]
    budget = liveness["periodSeconds"] * liveness["failureThreshold"]
    assert budget > DEFAULT_MAX_WAIT + liveness["timeoutSeconds"], "outlasts a long poll"
    assert api["ports"] == [{"name": "http", "containerPort": DEFAULT_API_PORT}]
    assert api["args"][:5] == ["serve", "--host", "0.0.0.0", "--port", str(DEFAULT_API_PORT)]
    assert (
        deployments["nagatha-worker"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
        == "worker"
    )
    assert deployments["nagatha-bridge"]["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "bridge"
    ]


def test_workers_get_more_time_to_stop_than_their_shutdown_grace() -> None:
    config = dict(
        line.split("=", 1)
        for line in (K8S_DIR / "config.env").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    worker = next(d for d in k8s_objects("Deployment") if d["metadata"]["name"] == "nagatha-worker")

    grace = float(config["NAGATHA_WORKER_SHUTDOWN_GRACE"])
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= grace + 10
    assert config["NAGATHA_MODULES_PATHS"] == "/app/modules"
    assert not any(re.search(r"TOKEN|PASS|SECRET|KEY|_URL", key) for key in config), (
        "credentials belong in the nagatha-secrets Secret"
    )
    assert not k8s_objects("Secret"), "the base must not ship a Secret with values"


def test_api_service_routes_to_the_api_pods() -> None:
    (service,) = k8s_objects("Service")
    api = next(d for d in k8s_objects("Deployment") if d["metadata"]["name"] == "nagatha-api")

    assert service["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_keda_component_scales_the_worker_on_rabbitmq_queue_depth() -> None:
    (scaled,) = k8s_objects("ScaledObject")
    (auth,) = k8s_objects("TriggerAuthentication")

    assert scaled["spec"]["scaleTargetRef"]["name"] == "nagatha-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == "default"
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert auth["spec"]["secretTargetRef"][0]["name"] == "nagatha-secrets"
    component = yaml.safe_load((K8S_DIR / "keda" / "kustomization.yaml").read_text("utf-8"))
    assert component["kind"] == "Component"
    base = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text("utf-8"))
    assert "keda" not in " ".join(base.get("resources", [])), "KEDA stays optional"


def test_kustomize_builds_the_base_and_the_keda_overlay(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` cannot build the manifests")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(K8S_DIR, overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [base], "components": [f"{base}/keda"]}), "utf-8"
    )

    for target in (K8S_DIR, overlay):
        result = subprocess.run(
            [kubectl, "kustomize", str(target)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        built = [d for d in yaml.safe_load_all(result.stdout) if d]
        workers = [d for d in built if d["metadata"]["name"] == "nagatha-worker"]
        deployment = next(d for d in workers if d["kind"] == "Deployment")
        env_from = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        assert env_from[0]["configMapRef"]["name"].startswith("nagatha-config-")
        # Under KEDA the HPA owns the replica count.
        assert ("replicas" in deployment["spec"]) is (target == K8S_DIR)


# --- the real stack (needs a Docker engine) ---------------------------------------------------


def docker_unavailable_reason() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no docker client on PATH"
    try:
        info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "`docker info` timed out: no Docker engine answers"
    if info.returncode != 0:
        return f"no Docker engine answers (`docker info` exited {info.returncode})"
    compose_v2 = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30
    )
    if compose_v2.returncode != 0:
        return "the Docker Compose v2 plugin (`docker compose`) is not installed"
    return None


@pytest.mark.docker
@pytest.mark.timeout(1800)
def test_docker_compose_up_serves_ping(tmp_path: Path) -> None:
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(f"needs a Docker engine: {reason}")

    # Given a private project: its own name, image tag, volumes and a free host port for
    # the API; RabbitMQ's and Redis's host ports are dropped so a running stack is untouched.
    project = f"nagatha-test-{secrets.token_hex(4)}"
    override = tmp_path / "compose.test.yml"
    override.write_text(
        "services:\n"
        "  api:\n    ports: !override\n      - '127.0.0.1::8000'\n"
        "  broker:\n    ports: !reset []\n"
        "  redis:\n    ports: !reset []\n",
        "utf-8",
    )
    env = {
        **os.environ,
        "NAGATHA_API_TOKENS": secrets.token_urlsafe(16),
        "NAGATHA_IMAGE": f"{project}:test",
    }
    base = ["docker", "compose", "-p", project, "-f", str(COMPOSE_FILE), "-f", str(override)]

    def compose_cmd(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )

    try:
        # When the image is built and the whole stack started
        up = compose_cmd("up", "--build", "--detach", "--wait", "--wait-timeout", "300")
        assert up.returncode == 0, up.stdout + up.stderr
        port = compose_cmd("port", "api", "8000", timeout=60).stdout.strip().rsplit(":", 1)[1]

        # Then the API answers /ping
        deadline, body = time.monotonic() + 60, None
        while body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as resp:
                    body = json.load(resp)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
        assert body["status"] == "ok"
        ps = compose_cmd("ps", "--format", "json", timeout=60).stdout.strip()
        # Compose prints a JSON array (before 2.21) or one JSON object per line (since).
        rows = json.loads(ps) if ps.startswith("[") else [json.loads(x) for x in ps.splitlines()]
        assert {row["Service"] for row in rows if row["State"] == "running"} == ALL_SERVICES
    finally:
        compose_cmd("down", "--volumes", "--remove-orphans", "--timeout", "30", timeout=300)
        subprocess.run(
            ["docker", "image", "rm", "--force", f"{project}:test"],
            capture_output=True,
            timeout=120,
        )


@pytest.mark.parametrize("name", ["nagatha-worker", "nagatha-bridge"])
def test_worker_and_bridge_readiness_probes_read_the_urls_as_the_hub_does(
    name: str, tmp_path: Path, rabbitmq: None, redis_server: None
) -> None:
    deployment = next(d for d in k8s_objects("Deployment") if d["metadata"]["name"] == name)
    command = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"][
        "command"
    ]
    base = {k: v for k, v in os.environ.items() if not k.startswith("NAGATHA_")}
    base.update({"HOME": str(tmp_path), "PYTHONPATH": str(ROOT)})
    closed = f"amqp://guest:guest@127.0.0.1:{free_port()}//"

    def probe(**env: str) -> int:
        run = subprocess.run(
            [sys.executable, *command[1:]], env={**base, **env}, cwd=tmp_path, timeout=30
        )
        return run.returncode

    # DESIGN's spelling with "__" is read as the hub reads it (a KeyError before).
    redis = "redis://127.0.0.1:6379/15"
    assert probe(NAGATHA_BROKER__URL=closed, NAGATHA_RESULTS__URL=redis) != 0
    broker = "amqp://guest:guest@127.0.0.1:5672//"
    assert probe(NAGATHA_BROKER__URL=broker, NAGATHA_RESULTS_URL=redis) == 0
