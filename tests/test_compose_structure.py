"""Structure checks for the container deployment (no Docker needed).

Reads docker-compose.yml, deploy/Dockerfile, .dockerignore and
deploy/nginx/gateway.conf and checks that they agree with each other and with
the code: every service exists and waits for what it needs, every environment
variable handed to a service is one of its settings, the gateway sends each API
prefix to the service (and port) that serves it, the image is built from the
lock file, Kafka's version is the one pinned in deploy/versions.env.

Run: uv run pytest tests/test_compose_structure.py -q
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from complaints_shared.settings import ServiceSettings
from followup.settings import FollowupSettings
from intake.settings import IntakeSettings
from routing.settings import RoutingSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
GATEWAY_CONF = ROOT / "deploy" / "nginx" / "gateway.conf"
VERSIONS_ENV = ROOT / "deploy" / "versions.env"


@dataclass(frozen=True)
class App:
    settings: type[ServiceSettings]
    port: int
    database: str


APPS: dict[str, App] = {
    "intake": App(IntakeSettings, 8001, "complaints_intake"),
    "routing": App(RoutingSettings, 8002, "complaints_routing"),
    "followup": App(FollowupSettings, 8003, "complaints_followup"),
}
SEED = "routing-seed"
INFRA = ("kafka", "mongo")
GATEWAY = "gateway"
LONG_RUNNING = (*INFRA, *APPS, GATEWAY)
EXPECTED_SERVICES = {*LONG_RUNNING, SEED}
REQUIRED_APP_ENV = {"KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URI", "JWT_SECRET"}

# The public API contract of the gateway: path prefix -> owning service.
GATEWAY_ROUTES = {
    "/v1/complaints": "intake",
    "/v1/reports": "intake",
    "/v1/routing": "routing",
    "/v1/directory": "routing",
    "/v1/assignments": "routing",
    "/v1/followups": "followup",
}
# Operational endpoints of the services that must not be reachable from outside.
INTERNAL_PATHS = ("/metrics", "/readyz", "/docs", "/redoc", "/openapi.json")


# --------------------------------------------------------------------- helpers


def _load_yaml(path: Path) -> dict[str, Any]:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name} must be a YAML mapping"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose.get("services")
    assert isinstance(found, dict) and found, "docker-compose.yml defines no services"
    return found


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment` as a dict, whichever of the two Compose forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {key: value for key, value in pairs}
    return {key: "" if value is None else str(value) for key, value in env.items()}


def default_of(value: str) -> str:
    """Resolve Compose interpolation the way it goes with the variables unset.

    ``${X:-d}`` / ``${X-d}`` become ``d``; a bare ``${X}`` stays as written so a
    check against it fails loudly instead of passing on an empty string.
    """
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command or []]


def option(command: list[str], name: str) -> str | None:
    """Value of ``--name VALUE`` or ``--name=VALUE`` in an argv list."""
    for index, part in enumerate(command):
        if part == name and index + 1 < len(command):
            return command[index + 1]
        if part.startswith(f"{name}="):
            return part.split("=", 1)[1]
    return None


def uvicorn_port(service_name: str, service: dict[str, Any]) -> int:
    command = command_of(service)
    port = option(command, "--port")
    assert port is not None, f"{service_name}: command {command} sets no --port"
    return int(port)


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # short form: condition service_started
        return {name: {"condition": "service_started"} for name in deps}
    return deps


def is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")).strip('"') == "no"


def settings_env_names(settings: type[ServiceSettings]) -> set[str]:
    return {name.upper() for name in settings.model_fields}


def read_versions_env() -> dict[str, str]:
    values = {}
    for line in VERSIONS_ENV.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip("'\"")
    return values


def named_volume_sources(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(source, target) of each named-volume mount of a service."""
    for mount in service.get("volumes") or []:
        if isinstance(mount, str):
            parts = mount.split(":")
            if len(parts) < 2:
                continue  # anonymous volume
            source, target = parts[0], parts[1]
            if source.startswith((".", "/", "~", "$")):
                continue  # bind mount
            yield source, target
        elif mount.get("type", "volume") == "volume" and mount.get("source"):
            yield mount["source"], mount["target"]


# ------------------------------------------------------------- nginx parsing


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None
    children: list[Directive] = field(default_factory=list)

    def all(self, name: str) -> list[Directive]:
        return [child for child in self.children if child.name == name]

    def first(self, name: str) -> Directive | None:
        found = self.all(name)
        return found[0] if found else None


def _nginx_tokens(text: str) -> Iterator[str]:
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char.isspace():
            i += 1
        elif char == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif char in "{};":
            yield char
            i += 1
        elif char in "'\"":
            end = i + 1
            while end < n and text[end] != char:
                end += 2 if text[end] == "\\" else 1
            assert end < n, "unterminated quoted string in nginx config"
            yield text[i + 1 : end]
            i = end + 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in "{};":
                i += 1
            yield text[start:i]


def parse_nginx(text: str) -> Directive:
    """Parse nginx config into a tree of directives (enough for this file)."""
    root = Directive("<file>", [])
    stack = [root]
    words: list[str] = []
    for token in _nginx_tokens(text):
        if token == ";":
            assert words, "empty directive in nginx config"
            stack[-1].children.append(Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            assert words, "block without a name in nginx config"
            block = Directive(words[0], words[1:])
            stack[-1].children.append(block)
            stack.append(block)
            words = []
        elif token == "}":
            assert len(stack) > 1 and not words, "unbalanced braces in nginx config"
            stack.pop()
        else:
            words.append(token)
    assert len(stack) == 1 and not words, "unbalanced braces in nginx config"
    return root


@pytest.fixture(scope="module")
def nginx() -> Directive:
    assert GATEWAY_CONF.is_file(), f"{GATEWAY_CONF.relative_to(ROOT)} is missing"
    return parse_nginx(GATEWAY_CONF.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def gateway_server(nginx: Directive) -> Directive:
    servers = [s for s in nginx.all("server") if any("8080" in d.args[0] for d in s.all("listen"))]
    assert len(servers) == 1, "gateway.conf needs exactly one server block listening on 8080"
    return servers[0]


def choose_location(server: Directive, path: str) -> Directive:
    """The location nginx picks for `path`: exact, else longest prefix, then regex."""
    exact, prefixes, regexes = [], [], []
    for location in server.all("location"):
        if location.args[0] == "=":
            exact.append(location)
        elif location.args[0] in ("~", "~*"):
            regexes.append(location)
        elif location.args[0] == "^~" or not location.args[0].startswith("@"):
            prefixes.append(location)
    for location in exact:
        if location.args[1] == path:
            return location
    best = max(
        (loc for loc in prefixes if path.startswith(loc.args[-1])),
        key=lambda loc: len(loc.args[-1]),
        default=None,
    )
    if best is None or best.args[0] != "^~":
        for location in regexes:
            flags = re.IGNORECASE if location.args[0] == "~*" else 0
            if re.search(location.args[1], path, flags):
                return location
    assert best is not None, f"no nginx location matches {path!r}"
    return best


def upstream_servers(nginx: Directive, location: Directive) -> list[tuple[str, int]]:
    """(host, port) of every server behind the location's proxy_pass."""
    proxy_pass = location.first("proxy_pass")
    assert proxy_pass is not None, f"location {' '.join(location.args)} has no proxy_pass"
    target = urlsplit(proxy_pass.args[0])
    upstreams = {u.args[0]: u for u in nginx.all("upstream")}
    if target.hostname in upstreams:
        servers = [s.args[0] for s in upstreams[target.hostname].all("server")]
    else:
        servers = [target.netloc]
    result = []
    for server in servers:
        host, _, port = server.rpartition(":")
        assert host and port.isdigit(), f"upstream server {server!r} must be host:port"
        result.append((host, int(port)))
    assert result, f"upstream {target.hostname!r} has no servers"
    return result


# ------------------------------------------------------------ compose: shape


def test_compose_uses_the_specification_format(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose Specification has no top-level `version:`"


def test_expected_services_exist(services: dict[str, Any]) -> None:
    missing = EXPECTED_SERVICES - services.keys()
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_long_running_service_has_healthcheck_and_restart_policy(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    check = service.get("healthcheck") or {}
    assert not check.get("disable"), f"{name}: healthcheck is disabled"
    test = check.get("test")
    assert test, f"{name}: healthcheck has no test"
    if isinstance(test, list):
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, (
            f"{name}: healthcheck test must be [CMD, ...] or [CMD-SHELL, ...], got {test}"
        )
    for key in ("interval", "timeout", "retries"):
        assert key in check, f"{name}: healthcheck sets no {key}"
    assert int(check["retries"]) >= 1, f"{name}: healthcheck retries must be >= 1"
    assert service.get("restart") in ("always", "unless-stopped"), (
        f"{name}: a long-running service needs restart: unless-stopped (or always)"
    )


def test_seed_job_is_one_shot(services: dict[str, Any]) -> None:
    seed = services[SEED]
    assert is_one_shot(seed), f'{SEED} must not be restarted (restart: "no")'
    assert command_of(seed)[-2:] == ["-m", "routing.demo"], (
        f"{SEED} must run `python -m routing.demo`, got {command_of(seed)}"
    )
    importlib.import_module("routing.demo")


def test_depends_on_targets_exist_and_wait_for_readiness(services: dict[str, Any]) -> None:
    problems = []
    for name, service in services.items():
        for target, spec in depends_on(service).items():
            condition = spec.get("condition", "service_started")
            if target not in services:
                problems.append(f"{name} depends on unknown service {target!r}")
            elif is_one_shot(services[target]):
                if condition != "service_completed_successfully":
                    problems.append(
                        f"{name} -> {target}: a one-shot job needs "
                        f"condition: service_completed_successfully, not {condition}"
                    )
            elif condition != "service_healthy":
                problems.append(
                    f"{name} -> {target}: needs condition: service_healthy, not {condition}"
                )
            elif not (services[target].get("healthcheck") or {}).get("test"):
                problems.append(
                    f"{name} waits for {target} to be healthy but it has no healthcheck"
                )
    assert not problems, "\n".join(problems)


def test_dependency_graph_has_no_cycle(services: dict[str, Any]) -> None:
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "visiting", f"depends_on cycle: {' -> '.join([*path, name])}"
        state[name] = "visiting"
        for target in depends_on(services.get(name, {})):
            visit(target, [*path, name])
        state[name] = "done"

    for name in services:
        visit(name, [])


@pytest.mark.parametrize("name", [*APPS, SEED])
def test_app_waits_for_kafka_and_mongo_as_needed(services: dict[str, Any], name: str) -> None:
    needed = ("mongo",) if name == SEED else INFRA
    deps = depends_on(services[name])
    for target in needed:
        assert target in deps, f"{name} must depend on {target} (condition: service_healthy)"


def test_gateway_waits_for_every_app(services: dict[str, Any]) -> None:
    missing = set(APPS) - set(depends_on(services[GATEWAY]))
    assert not missing, f"gateway must depend on {sorted(missing)} being healthy"


# ----------------------------------------------------------- compose: images


def test_app_services_share_one_image_built_from_the_dockerfile(
    services: dict[str, Any],
) -> None:
    images = {}
    for name in [*APPS, SEED]:
        service = services[name]
        build = service.get("build")
        assert isinstance(build, dict), f"{name}: needs build: {{context, dockerfile}}"
        context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
        assert context == ROOT, f"{name}: build context must be the repository root"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.resolve() == DOCKERFILE, f"{name}: must build from deploy/Dockerfile"
        assert DOCKERFILE.is_file(), "deploy/Dockerfile is missing"
        images[name] = service.get("image")
    assert len(set(images.values())) == 1 and None not in images.values(), (
        f"app services must share one image name, got {images}"
    )


def test_kafka_image_matches_pinned_version(services: dict[str, Any]) -> None:
    pinned = read_versions_env().get("KAFKA_VERSION")
    assert pinned, "deploy/versions.env defines no KAFKA_VERSION"
    image = str(services["kafka"]["image"])
    repository, _, tag = default_of(image).partition(":")
    assert repository == "apache/kafka", f"kafka must use the apache/kafka image, got {image}"
    assert tag == pinned, (
        f"kafka image tag {tag!r} (from {image!r}) != KAFKA_VERSION={pinned} in deploy/versions.env"
    )


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = default_of(str(service.get("image", "")))
        if name in APPS or name == SEED:
            continue  # built locally
        assert ":" in image and not image.endswith(":latest"), (
            f"{name}: pin the image to a version, got {image!r}"
        )


# -------------------------------------------------------- compose: networking


def test_only_the_gateway_publishes_ports(services: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {GATEWAY}, (
        "only the gateway may publish host ports (a fixed host port stops "
        f"`docker compose up --scale`); published: {published}"
    )


def test_gateway_publishes_8080(services: dict[str, Any]) -> None:
    ports = services[GATEWAY]["ports"]
    pairs = set()
    for port in ports:
        if isinstance(port, dict):
            pairs.add((str(port.get("published")), str(port.get("target"))))
        else:
            parts = str(port).split(":")
            pairs.add((parts[-2] if len(parts) > 1 else "", parts[-1].split("/")[0]))
    assert ("8080", "8080") in pairs, f"gateway must publish 8080:8080, got {ports}"


@pytest.mark.parametrize("name", [*APPS, SEED])
def test_scalable_services_have_no_fixed_container_name(
    services: dict[str, Any], name: str
) -> None:
    assert "container_name" not in services[name], (
        f"{name}: container_name prevents running more than one replica"
    )


# ------------------------------------------------------ compose: app config


@pytest.mark.parametrize("name", [*APPS, SEED])
def test_app_environment_names_are_settings_fields(services: dict[str, Any], name: str) -> None:
    app = APPS["routing" if name == SEED else name]
    env = environment_of(services[name])
    unknown = set(env) - settings_env_names(app.settings)
    assert not unknown, (
        f"{name}: {sorted(unknown)} are not fields of {app.settings.__name__} "
        "(a typo would be silently ignored by pydantic-settings)"
    )
    missing = REQUIRED_APP_ENV - set(env)
    assert not missing, f"{name}: required variables {sorted(missing)} are not set"
    assert env.get("MONGODB_DATABASE") == app.database, (
        f"{name}: MONGODB_DATABASE must be {app.database}, got {env.get('MONGODB_DATABASE')!r}"
    )


@pytest.mark.parametrize("name", [*APPS, SEED])
def test_jwt_secret_is_required_from_the_operator(services: dict[str, Any], name: str) -> None:
    value = environment_of(services[name])["JWT_SECRET"]
    assert re.fullmatch(r"\$\{JWT_SECRET:?\?[^}]*\}", value), (
        f"{name}: JWT_SECRET must be `${{JWT_SECRET:?message}}` (no default secret), got {value!r}"
    )


@pytest.mark.parametrize("name", [*APPS, SEED])
def test_app_connects_to_the_compose_infrastructure(services: dict[str, Any], name: str) -> None:
    env = environment_of(services[name])
    kafka_env = environment_of(services["kafka"])
    advertised = {
        url.split("://", 1)[1] for url in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    for server in default_of(env["KAFKA_BOOTSTRAP_SERVERS"]).split(","):
        assert server in advertised, (
            f"{name}: bootstrap server {server} is not one Kafka advertises ({advertised})"
        )
    uri = urlsplit(default_of(env["MONGODB_URI"]))
    assert uri.hostname == "mongo", f"{name}: MONGODB_URI must point at the mongo service"
    assert parse_qs(uri.query).get("replicaSet") == [mongo_replica_set(services)], (
        f"{name}: MONGODB_URI must name replicaSet={mongo_replica_set(services)}"
    )


@pytest.mark.parametrize("name", APPS)
def test_app_command_runs_its_factory_on_its_port(services: dict[str, Any], name: str) -> None:
    command = command_of(services[name])
    assert command[:2] == ["uvicorn", f"{name}.main:create_app"], (
        f"{name}: command must start `uvicorn {name}.main:create_app`, got {command}"
    )
    assert "--factory" in command, f"{name}: create_app is a factory: pass --factory"
    assert option(command, "--host") == "0.0.0.0", f"{name}: must listen on --host 0.0.0.0"
    assert uvicorn_port(name, services[name]) == APPS[name].port
    module = importlib.import_module(f"{name}.main")
    assert callable(getattr(module, "create_app", None)), f"{name}.main has no create_app"


@pytest.mark.parametrize("name", APPS)
def test_app_healthcheck_probes_readiness_on_its_own_port(
    services: dict[str, Any], name: str
) -> None:
    test = " ".join(str(part) for part in services[name]["healthcheck"]["test"])
    urls = re.findall(r"https?://[^\s'\"]+", test)
    assert urls, f"{name}: healthcheck does not call an URL: {test}"
    url = urlsplit(urls[0])
    assert url.port == uvicorn_port(name, services[name]), (
        f"{name}: healthcheck probes port {url.port}, the service listens on "
        f"{uvicorn_port(name, services[name])}"
    )
    assert url.path == "/readyz", f"{name}: healthcheck should probe /readyz, got {url.path}"
    assert test.split()[1] != "curl", f"{name}: python:3.11-slim has no curl"


@pytest.mark.parametrize("name", APPS)
def test_app_shutdown_fits_in_the_grace_period(services: dict[str, Any], name: str) -> None:
    grace = services[name].get("stop_grace_period")
    assert grace, f"{name}: set stop_grace_period so shutdown can drain"
    seconds = int(re.fullmatch(r"(\d+)s", str(grace)).group(1))
    drain = option(command_of(services[name]), "--timeout-graceful-shutdown")
    if drain is not None:
        assert int(drain) < seconds, (
            f"{name}: uvicorn drains for {drain}s but Docker kills after {seconds}s"
        )


# ---------------------------------------------------- compose: infrastructure


def test_kafka_is_a_single_node_kraft_broker_and_controller(services: dict[str, Any]) -> None:
    env = {k: default_of(v) for k, v in environment_of(services["kafka"]).items()}
    roles = set(env.get("KAFKA_PROCESS_ROLES", "").split(","))
    assert roles == {"broker", "controller"}, "KAFKA_PROCESS_ROLES must be broker,controller"
    node_id = env.get("KAFKA_NODE_ID")
    voters = env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "")
    assert voters.split("@")[0] == node_id, f"quorum voter {voters} must be node {node_id}"
    controller = env.get("KAFKA_CONTROLLER_LISTENER_NAMES")
    listeners = {item.split("://")[0] for item in env.get("KAFKA_LISTENERS", "").split(",")}
    assert controller in listeners, f"controller listener {controller} is not in KAFKA_LISTENERS"
    protocol_map = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert listeners <= set(protocol_map), "every listener needs a security protocol mapping"
    assert env.get("KAFKA_INTER_BROKER_LISTENER_NAME") in listeners
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
    ):
        assert env.get(key) == "1", f"{key} must be 1 on a single broker (default is 3)"
    assert env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") == "false", (
        "the services create their topics; auto-creation must be off"
    )
    log_dirs = env.get("KAFKA_LOG_DIRS")
    mounted = {target for _, target in named_volume_sources(services["kafka"])}
    assert log_dirs in mounted, f"KAFKA_LOG_DIRS={log_dirs} must be on a named volume ({mounted})"


def mongo_replica_set(services: dict[str, Any]) -> str:
    command = command_of(services["mongo"])
    replica_set = option(command, "--replSet")
    assert replica_set, f"mongo must run as a replica set (--replSet), command: {command}"
    return replica_set


def test_mongo_runs_as_an_initialised_replica_set(services: dict[str, Any]) -> None:
    replica_set = mongo_replica_set(services)
    command = command_of(services["mongo"])
    assert "--bind_ip_all" in command, "mongo must listen on all interfaces (--bind_ip_all)"
    probe = " ".join(str(part) for part in services["mongo"]["healthcheck"]["test"])
    assert "rs.initiate" in probe, "mongo's healthcheck must initiate the replica set"
    assert re.search(rf"_id\s*:\s*['\"]{re.escape(replica_set)}['\"]", probe), (
        f"the healthcheck initiates a replica set other than {replica_set}"
    )
    assert "mongo:27017" in probe, "the member host must be mongo:27017 (what clients resolve)"
    assert any(target == "/data/db" for _, target in named_volume_sources(services["mongo"])), (
        "mongo's /data/db must be a named volume"
    )


def test_named_volumes_are_declared_and_used(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    declared = set(compose.get("volumes") or {})
    used = {source for s in services.values() for source, _ in named_volume_sources(s)}
    assert used <= declared, f"volumes used but not declared: {sorted(used - declared)}"
    assert declared <= used, f"volumes declared but never mounted: {sorted(declared - used)}"


def test_bind_mounted_files_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for mount in service.get("volumes") or []:
            if isinstance(mount, dict):
                source = mount.get("source", "") if mount.get("type") == "bind" else ""
            else:
                source = mount.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source} does not exist"


def test_gateway_mounts_its_config_read_only(services: dict[str, Any]) -> None:
    mounts = [m for m in services[GATEWAY].get("volumes") or [] if isinstance(m, dict)]
    conf = [m for m in mounts if (COMPOSE_FILE.parent / m["source"]).resolve() == GATEWAY_CONF]
    assert conf, "gateway must bind-mount deploy/nginx/gateway.conf (long syntax)"
    assert conf[0]["target"].startswith("/etc/nginx/conf.d/"), (
        "gateway.conf holds http-level blocks: mount it under /etc/nginx/conf.d/"
    )
    assert conf[0].get("read_only") is True, "mount gateway.conf read-only"


def test_compose_config_is_valid_for_docker_compose() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker CLI not installed: cannot run `docker compose config`")
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, check=False, timeout=60
    )
    if probe.returncode != 0:
        reason = (probe.stderr or probe.stdout).strip().splitlines()
        pytest.skip(f"docker compose plugin unavailable: {reason[0] if reason else 'no output'}")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "JWT_SECRET": "structure-test-only"},
        timeout=120,
    )
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"


# --------------------------------------------------------------- the gateway


@pytest.mark.parametrize(("prefix", "owner"), GATEWAY_ROUTES.items())
def test_gateway_routes_prefix_to_its_service(
    nginx: Directive,
    gateway_server: Directive,
    services: dict[str, Any],
    prefix: str,
    owner: str,
) -> None:
    for path in (prefix, f"{prefix}/some-id", f"{prefix}/some-id/sub"):
        location = choose_location(gateway_server, path)
        targets = upstream_servers(nginx, location)
        for host, port in targets:
            assert host == owner, f"{path} goes to {host}, must go to {owner}"
            assert host in services, f"upstream host {host} is not a compose service"
            assert port == uvicorn_port(host, services[host]), (
                f"{path} goes to {host}:{port} but {host} listens on "
                f"{uvicorn_port(host, services[host])}"
            )


@pytest.mark.parametrize("name", APPS)
def test_every_api_route_of_an_app_is_reachable_through_the_gateway(
    nginx: Directive,
    gateway_server: Directive,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    import complaints_shared.http

    monkeypatch.setattr(complaints_shared.http, "configure_logging", lambda **_: None)
    app = importlib.import_module(f"{name}.main").create_app()
    # The OpenAPI document lists every public route, however routers are nested.
    api_paths = sorted(path for path in app.openapi()["paths"] if path.startswith("/v1/"))
    assert api_paths, f"{name} serves no /v1 routes"
    for path in api_paths:
        sample = re.sub(r"\{[^}]+\}", "sample", path)
        location = choose_location(gateway_server, sample)
        hosts = {host for host, _ in upstream_servers(nginx, location)}
        assert hosts == {name}, f"{name} serves {path} but the gateway sends it to {hosts}"


@pytest.mark.parametrize("path", INTERNAL_PATHS)
def test_gateway_does_not_expose_operational_endpoints(
    gateway_server: Directive, path: str
) -> None:
    location = choose_location(gateway_server, path)
    assert location.first("proxy_pass") is None, f"the gateway proxies internal path {path}"


def test_gateway_unknown_paths_are_problem_json_404(gateway_server: Directive) -> None:
    location = choose_location(gateway_server, "/no/such/api")
    returned = location.first("return")
    assert returned is not None and returned.args[0] == "404", "unknown paths must return 404"
    content_type = location.first("default_type")
    assert content_type is not None and content_type.args == ["application/problem+json"], (
        "the 404 for unknown paths must be application/problem+json"
    )


def test_gateway_has_its_own_healthz(services: dict[str, Any], gateway_server: Directive) -> None:
    location = choose_location(gateway_server, "/healthz")
    assert location.args[0] == "=" and location.first("proxy_pass") is None, (
        "the gateway must answer /healthz itself (location = /healthz)"
    )
    returned = location.first("return")
    assert returned is not None and returned.args[0] == "200"
    probe = " ".join(services[GATEWAY]["healthcheck"]["test"])
    assert "/healthz" in probe and ":8080" in probe, (
        "the gateway healthcheck must hit :8080/healthz"
    )


def test_gateway_forwards_auth_idempotency_and_client_headers(gateway_server: Directive) -> None:
    headers = {d.args[0].lower(): d.args[1] for d in gateway_server.all("proxy_set_header")}
    assert headers.get("authorization") == "$http_authorization"
    assert headers.get("idempotency-key") == "$http_idempotency_key"
    for name in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"):
        assert name in headers, f"gateway does not set {name}"
    proxied = [loc for loc in gateway_server.all("location") if loc.first("proxy_pass") is not None]
    overriding = [" ".join(loc.args) for loc in proxied if loc.first("proxy_set_header")]
    assert not overriding, (
        f"locations {overriding} set proxy_set_header and so drop every server-level header"
    )


def test_gateway_keeps_upstream_connections_alive(
    nginx: Directive, gateway_server: Directive
) -> None:
    for upstream in nginx.all("upstream"):
        assert upstream.first("keepalive"), f"upstream {upstream.args[0]} has no keepalive"
    assert gateway_server.first("proxy_http_version").args == ["1.1"]
    headers = {d.args[0].lower(): d.args[1] for d in gateway_server.all("proxy_set_header")}
    assert headers.get("connection") == "", 'keepalive needs proxy_set_header Connection ""'


def test_gateway_limits_request_bodies(gateway_server: Directive) -> None:
    limit = gateway_server.first("client_max_body_size")
    assert limit is not None and limit.args == ["1m"], "client_max_body_size must be 1m"


# -------------------------------------------------------------- the image


@dataclass
class Instruction:
    keyword: str
    value: str


def dockerfile_instructions() -> list[Instruction]:
    assert DOCKERFILE.is_file(), "deploy/Dockerfile is missing"
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, value = line.partition(" ")
            result.append(Instruction(keyword.upper(), value.strip()))
    return result


def dockerfile_stages() -> tuple[dict[str, str], list[tuple[str, list[Instruction]]]]:
    """(global ARG defaults, [(base image, instructions of the stage)])."""
    args: dict[str, str] = {}
    stages: list[tuple[str, list[Instruction]]] = []
    for instruction in dockerfile_instructions():
        if instruction.keyword == "FROM":
            base = instruction.value.split()[0]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), base)
            stages.append((base, []))
        elif not stages and instruction.keyword == "ARG":
            key, _, default = instruction.value.partition("=")
            args[key] = default
        elif stages:
            stages[-1][1].append(instruction)
    return args, stages


def test_image_is_multi_stage_on_python_311_slim() -> None:
    _, stages = dockerfile_stages()
    assert len(stages) >= 2, "deploy/Dockerfile must be multi-stage (builder + runtime)"
    bases = {base for base, _ in stages}
    assert bases == {"python:3.11-slim"}, (
        f"builder and runtime must both be python:3.11-slim (the venv links to its "
        f"interpreter), got {bases}"
    )


def test_builder_installs_the_locked_dependencies() -> None:
    _, stages = dockerfile_stages()
    runs = [i.value for _, stage in stages[:-1] for i in stage if i.keyword == "RUN"]
    assert any(re.search(r"pip install[^&;]*\buv==\d+\.\d+\.\d+", run) for run in runs), (
        "install an exactly pinned uv (pip install uv==X.Y.Z)"
    )
    syncs = [run for run in runs if "uv sync" in run]
    assert syncs, "the builder never runs uv sync"
    for run in syncs:
        for flag in ("--frozen", "--no-dev", "--no-editable"):
            assert flag in run, f"`{run}` lacks {flag}"


def test_runtime_stage_runs_the_venv_as_non_root() -> None:
    _, stages = dockerfile_stages()
    runtime = stages[-1][1]
    copies = [i.value for i in runtime if i.keyword == "COPY"]
    assert any("--from=" in c and "/app/.venv" in c for c in copies), (
        "the runtime stage must copy /app/.venv from the builder"
    )
    users = [i.value for i in runtime if i.keyword == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"USER {users[-1]} is root"
    env = " ".join(i.value for i in runtime if i.keyword == "ENV")
    assert "/app/.venv/bin" in env and "PYTHONUNBUFFERED=1" in env
    exposed = {p for i in runtime if i.keyword == "EXPOSE" for p in i.value.split()}
    assert {str(app.port) for app in APPS.values()} <= exposed, f"EXPOSE {exposed}"
    cmd = [i.value for i in runtime if i.keyword == "CMD"]
    assert cmd and "intake.main:create_app" in cmd[-1], "default CMD should run intake"


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        pattern = pattern.removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p.split("/")[-1], pattern)
            for p in prefixes
        ):
            ignored = not negate
    return ignored


def test_build_context_keeps_sources_and_drops_local_state() -> None:
    assert DOCKERIGNORE.is_file(), ".dockerignore is missing (the context is the repo root)"
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for unwanted in (".venv", ".git", ".local", "tests", "bench-results", ".env"):
        assert _ignored(unwanted, patterns), f".dockerignore must exclude {unwanted}"
    assert _ignored("services/intake/intake/__pycache__", patterns), "exclude __pycache__"
    _, stages = dockerfile_stages()
    for _, stage in stages:
        for instruction in stage:
            if instruction.keyword != "COPY" or "--from=" in instruction.value:
                continue
            sources = [s for s in instruction.value.split()[:-1] if not s.startswith("--")]
            for source in sources:
                source = source.rstrip("/")
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not _ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
