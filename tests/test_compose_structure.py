"""The container deployment agrees with the code (no Docker engine needed).

- docker-compose.yml is a valid Compose file: ``docker compose config`` where the Docker
  Compose CLI is installed, and always the Compose Specification's JSON schema (the copy
  check-jsonschema ships, with its licence) through ``jsonschema``;
- every environment variable handed to an app service is a field of the settings of the
  service it configures (a typo would be silently ignored by pydantic-settings);
- every ``/v1`` route of every service is reachable through the gateway's locations
  (deploy/nginx/gateway.conf, read with crossplane, nginx's configuration parser), on the
  port the service listens on, and no operational endpoint is;
- only the gateway publishes a host port (a fixed one would stop ``--scale``);
- no service starts without the operator's ``JWT_SECRET``;
- the topic settings are the same for every service (the first to start creates the topics);
- the demo organisation is seeded only in the ``demo`` profile, and nothing a plain
  ``docker compose up`` starts depends on a service outside it;
- every service has a memory limit, and MongoDB's cache and Kafka's heap fit theirs.

The app services and their settings are found from the compose file itself (the Python
package each one runs), so a new service is checked as soon as it is added there.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import crossplane
import jsonschema
import pytest
import yaml

from complaints_shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
GATEWAY_CONF = ROOT / "deploy" / "nginx" / "gateway.conf"
VERSIONS_ENV = ROOT / "deploy" / "versions.env"
GATEWAY = "gateway"
# Operational endpoints of the services that must not be reachable from outside.
INTERNAL_PATHS = ("/metrics", "/readyz", "/docs", "/redoc", "/openapi.json")


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


SERVICES: dict[str, dict[str, Any]] = compose()["services"]


# ------------------------------------------------------------ the app services


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def option(command: list[str], name: str) -> str | None:
    """Value of ``--name VALUE`` or ``--name=VALUE`` in an argv list."""
    for index, part in enumerate(command):
        if part == name and index + 1 < len(command):
            return command[index + 1]
        if part.startswith(f"{name}="):
            return part.split("=", 1)[1]
    return None


@dataclass(frozen=True)
class App:
    """A compose service that runs one of the project's packages."""

    package: str
    settings: type[ServiceSettings]
    port: int | None  # None for a one-shot job


def _package_of(command: list[str]) -> str | None:
    """``uvicorn intake.main:create_app`` → intake; ``python -m routing.demo`` → routing."""
    target = command[1] if command[:1] == ["uvicorn"] else option(command, "-m")
    return target.split(".", 1)[0] if target else None


def _settings_of(package: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"{package}.settings")
    (settings,) = (
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value is not ServiceSettings
        and value.__module__ == module.__name__
    )
    return settings


def _apps() -> dict[str, App]:
    apps = {}
    for name, service in SERVICES.items():
        if "build" not in service:
            continue  # a public image (Kafka, MongoDB, nginx), not our code
        command = command_of(service)
        package = _package_of(command)
        assert package, f"{name}: cannot tell which package {command} runs"
        port = option(command, "--port")
        apps[name] = App(package, _settings_of(package), int(port) if port else None)
    return apps


APPS = _apps()
SERVERS = {name: app for name, app in APPS.items() if app.port is not None}


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment` as a dict, whichever of the two Compose forms it uses."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def test_the_app_services_are_found_in_the_compose_file() -> None:
    assert {"intake", "routing", "followup", "webhooks"} <= set(SERVERS), sorted(SERVERS)
    assert GATEWAY in SERVICES


# ------------------------------------------------------------------ validity


def compose_schema() -> dict[str, Any]:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor")
    assert (vendored / "licenses" / "LICENSE.compose-spec").is_file()
    return json.loads((vendored / "compose-spec.json").read_text(encoding="utf-8"))


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def test_compose_file_follows_the_compose_specification_schema() -> None:
    assert schema_errors(compose()) == []


def test_the_schema_check_catches_a_misspelt_key() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["intake"]["depend_on"] = broken["services"]["intake"].pop("depends_on")
    assert any("depend_on" in error for error in schema_errors(broken))


def _docker_compose() -> list[str]:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI here: the JSON schema check stands in for docker compose")
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, check=False, timeout=60
    )
    if probe.returncode != 0:
        reason = (probe.stderr or probe.stdout).strip().splitlines()
        pytest.skip(f"docker compose unavailable ({reason[0] if reason else 'no output'})")
    # No .env file: the operator's environment is exactly what each run passes.
    return [docker, "compose", "--env-file", os.devnull, "-f", str(COMPOSE_FILE), "config", "-q"]


def test_docker_compose_accepts_the_file_and_refuses_it_without_jwt_secret() -> None:
    command = _docker_compose()
    env = {key: value for key, value in os.environ.items() if key != "JWT_SECRET"}
    run = {"capture_output": True, "text": True, "check": False, "cwd": ROOT, "timeout": 120}
    accepted = subprocess.run(command, env={**env, "JWT_SECRET": "compose-test-only"}, **run)
    assert accepted.returncode == 0, f"docker compose config failed:\n{accepted.stderr}"
    refused = subprocess.run(command, env=env, **run)
    assert refused.returncode != 0 and "JWT_SECRET" in refused.stderr


# ------------------------------------------------------- app configuration


@pytest.mark.parametrize("name", APPS)
def test_every_environment_name_is_a_settings_field_of_its_service(name: str) -> None:
    app = APPS[name]
    fields = {field.upper() for field in app.settings.model_fields}
    unknown = set(environment_of(SERVICES[name])) - fields
    assert not unknown, f"{name}: {sorted(unknown)} are not fields of {app.settings.__name__}"


@pytest.mark.parametrize("name", APPS)
def test_every_service_is_given_its_infrastructure_and_database(name: str) -> None:
    app = APPS[name]
    env = environment_of(SERVICES[name])
    missing = {"KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URI"} - set(env)
    assert not missing, f"{name}: {sorted(missing)} are not set"
    # A job working on a service's data (the seed) uses that service's database.
    own = app.settings.model_construct().database_name()
    assert env.get("MONGODB_DATABASE", own) == own


@pytest.mark.parametrize("name", APPS)
def test_jwt_secret_is_required_from_the_operator(name: str) -> None:
    value = environment_of(SERVICES[name]).get("JWT_SECRET", "")
    assert re.fullmatch(r"\$\{JWT_SECRET:?\?[^}]*\}", value), (
        f"{name}: JWT_SECRET must be `${{JWT_SECRET:?message}}` (no default secret), got {value!r}"
    )


def default_of(value: Any) -> str:
    """A value as Compose reads it with every ``${VAR:-default}`` variable unset."""
    return re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", str(value))


IDENTITY_SETTINGS = (
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWT_JWKS_URL",
    "JWT_OIDC_DISCOVERY",
    "JWT_ALGORITHMS",
    "JWT_LEEWAY_S",
    "JWT_CLAIM_SUBJECT",
    "JWT_CLAIM_ORG",
    "JWT_CLAIM_BRANCHES",
    "JWT_CLAIM_ROLES",
    "JWT_ROLE_MAP",
)


def test_the_identity_providers_settings_reach_every_service_alike() -> None:
    """docs/security.md has operators set the provider's claims and role map in .env: until
    6 December compose passed none of them, and every provider's token had no roles (403)."""
    given = {
        name: tuple(environment_of(SERVICES[name]).get(key) for key in IDENTITY_SETTINGS)
        for name in SERVERS
    }
    assert len(set(given.values())) == 1, f"identity settings differ between services: {given}"
    values = dict(zip(IDENTITY_SETTINGS, next(iter(given.values())), strict=True))
    for key, value in values.items():
        assert value is not None and f"${{{key}:-" in value, f"{key} is not taken from .env"
    # Unset, each is what the code defaults to (an empty role map is none).
    defaults = {key: default_of(value) for key, value in values.items()}
    settings = ServiceSettings(**{"jwt_secret": "s" * 32, **defaults})
    for key in IDENTITY_SETTINGS:
        field = ServiceSettings.model_fields[key.lower()]
        expected = field.default_factory() if field.default_factory else field.default
        assert getattr(settings, key.lower()) == expected, key


def test_an_empty_role_map_in_the_environment_is_none_and_json_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Compose passes ``JWT_ROLE_MAP`` empty when .env does not set it: until 6 December an
    empty value stopped every service at start-up (not JSON)."""
    monkeypatch.setenv("JWT_SECRET", "s" * 32)
    monkeypatch.setenv("JWT_ROLE_MAP", "")
    assert ServiceSettings().jwt_role_map == {}
    monkeypatch.setenv("JWT_ROLE_MAP", '{"realm-agent": "agent"}')
    assert ServiceSettings().jwt_role_map == {"realm-agent": "agent"}


def test_an_empty_holiday_country_in_env_reaches_follow_up() -> None:
    """``${VAR-default}``, not ``${VAR:-default}``: an empty value in .env (no public
    holidays) is passed on, not replaced by CN."""
    value = environment_of(SERVICES["followup"])["CONTACT_HOLIDAY_COUNTRY"]
    assert value == "${CONTACT_HOLIDAY_COUNTRY-CN}", value


def test_kafka_image_is_the_version_pinned_in_versions_env() -> None:
    pins = dict(
        line.split("=", 1)
        for line in VERSIONS_ENV.read_text(encoding="utf-8").splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    pinned = pins["KAFKA_VERSION"].strip().strip("'\"")
    # The image's tag with the variable unset: the default must be the pin.
    assert default_of(SERVICES["kafka"]["image"]) == f"apache/kafka:{pinned}"


TOPIC_SETTINGS = ("TOPIC_PARTITIONS", "TOPIC_REPLICATION_FACTOR", "DEAD_LETTER_RETENTION_MS")


def test_topic_settings_are_the_same_for_every_service() -> None:
    # Every service creates every missing topic at start-up with its own values: one set
    # for all (from .env), defaulting to what the code defaults to.
    given = {
        name: tuple(environment_of(SERVICES[name]).get(key) for key in TOPIC_SETTINGS)
        for name in SERVERS
    }
    assert len(set(given.values())) == 1, f"topic settings differ between services: {given}"
    values = dict(zip(TOPIC_SETTINGS, next(iter(given.values())), strict=True))
    for key, value in values.items():
        assert value is not None, f"{key} is not passed to the services"
        assert default_of(value) == str(ServiceSettings.model_fields[key.lower()].default), key


# ------------------------------------------------------------------ profiles


def runs_the_demo_seed(service: dict[str, Any]) -> bool:
    return option(command_of(service), "-m") == "routing.demo"


def started_by_default(service: dict[str, Any]) -> bool:
    """A plain ``docker compose up`` starts exactly the services that name no profile."""
    return not service.get("profiles")


def test_the_demo_organisation_is_seeded_only_in_the_demo_profile() -> None:
    seeds = {name for name, service in SERVICES.items() if runs_the_demo_seed(service)}
    assert seeds, "no service runs routing.demo: the demo profile seeds nothing"
    for name in seeds:
        assert SERVICES[name].get("profiles") == ["demo"], f"{name} seeds outside the demo profile"


def test_nothing_started_by_default_depends_on_a_service_outside_the_default_profile() -> None:
    default = {name for name, service in SERVICES.items() if started_by_default(service)}
    for name in default:
        # depends_on is a list or a mapping of names: either iterates over the names
        outside = set(SERVICES[name].get("depends_on") or ()) - default
        assert not outside, f"{name} depends on {sorted(outside)}, which only a profile starts"


# ---------------------------------------------------------------------- memory

GIB = 2**30
SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": GIB}


def size_bytes(value: str) -> int:
    """``512m``, ``2g``, ``1.5GB`` → bytes (Compose's and the JVM's notation)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([bkmg]?)b?", value.strip().lower())
    assert match, f"not a memory size: {value!r}"
    return int(float(match[1]) * SIZE_UNITS[match[2]])


def memory_limit(name: str) -> int:
    return size_bytes(default_of(SERVICES[name]["mem_limit"]))


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_has_a_memory_limit(name: str) -> None:
    assert "mem_limit" in SERVICES[name], f"{name} has no mem_limit"
    assert memory_limit(name) >= 128 * 2**20, f"{name}: {SERVICES[name]['mem_limit']} is too little"


def test_mongodb_cache_is_set_and_leaves_a_gigabyte_of_its_memory_limit() -> None:
    command = [default_of(part) for part in command_of(SERVICES["mongo"])]
    cache_gb = option(command, "--wiredTigerCacheSizeGB")
    assert cache_gb is not None, "mongod's cache would grow to half of the host's memory"
    assert float(cache_gb) * GIB + GIB <= memory_limit("mongo"), (
        f"a {cache_gb} GB cache in {SERVICES['mongo']['mem_limit']}: keep 1 GB beside the cache"
    )


def test_kafka_heap_is_set_and_leaves_a_gigabyte_of_its_memory_limit() -> None:
    heap = default_of(environment_of(SERVICES["kafka"]).get("KAFKA_HEAP_OPTS", ""))
    maximum = re.search(r"-Xmx(\S+)", heap)
    assert maximum, f"no -Xmx in KAFKA_HEAP_OPTS {heap!r}"
    assert size_bytes(maximum[1]) + GIB <= memory_limit("kafka"), (
        f"-Xmx{maximum[1]} in {SERVICES['kafka']['mem_limit']}: keep 1 GB beside the heap"
    )
    # The healthcheck's tool is a second JVM in the same container: not with the broker's heap.
    probe = [str(part) for part in SERVICES["kafka"]["healthcheck"]["test"]]
    assert any(part.startswith("KAFKA_HEAP_OPTS=") for part in probe), probe


# ------------------------------------------------------------------ networking


def published_ports(service: dict[str, Any]) -> set[int]:
    """The container ports a service publishes on the host."""
    ports = set()
    for port in service.get("ports") or []:
        target = port["target"] if isinstance(port, dict) else str(port).rsplit(":", 1)[-1]
        ports.add(int(str(target).split("/")[0]))
    return ports


def test_only_the_gateway_publishes_ports() -> None:
    publishing = {name for name, service in SERVICES.items() if service.get("ports")}
    assert publishing == {GATEWAY}, f"published ports: {sorted(publishing)}"
    assert published_ports(SERVICES[GATEWAY]) <= gateway().listens


# ----------------------------------------------------------------- the gateway


@dataclass
class Gateway:
    listens: set[int]
    locations: list[dict[str, Any]]
    upstreams: dict[str, list[str]]

    def location(self, path: str) -> dict[str, Any]:
        """The location nginx picks for ``path``: exact, else regex unless ``^~``, else prefix."""
        exact = [loc for loc in self.locations if loc["args"][0] == "="]
        for location in exact:
            if location["args"][1] == path:
                return location
        prefixes = [loc for loc in self.locations if path.startswith(_prefix(loc) or "\0")]
        longest = max(prefixes, key=lambda loc: len(_prefix(loc)), default=None)
        if longest is None or longest["args"][0] != "^~":
            for location in self.locations:
                if location["args"][0] in ("~", "~*"):
                    flags = re.IGNORECASE if location["args"][0] == "~*" else 0
                    if re.search(location["args"][1], path, flags):
                        return location
        assert longest is not None, f"no location of the gateway matches {path}"
        return longest

    def targets(self, location: dict[str, Any]) -> set[tuple[str, int]]:
        """(host, port) of every server behind a location's proxy_pass; empty if none."""
        passes = [d["args"][0] for d in location.get("block", []) if d["directive"] == "proxy_pass"]
        result = set()
        for target in passes:
            netloc = urlsplit(target).netloc
            for server in self.upstreams.get(netloc, [netloc]):
                host, _, port = server.rpartition(":")
                result.add((host, int(port)))
        return result


def _prefix(location: dict[str, Any]) -> str | None:
    """The prefix a location matches (``location /v1/x``, ``location ^~ /x``), if it is one."""
    args = location["args"]
    if args[0] == "^~":
        return args[1]
    return args[0] if len(args) == 1 and not args[0].startswith("@") else None


def gateway() -> Gateway:
    parsed = crossplane.parse(
        str(GATEWAY_CONF), single=True, comments=False, check_ctx=False, check_args=False
    )
    assert parsed["errors"] == [], parsed["errors"]
    directives = parsed["config"][0]["parsed"]
    upstreams = {
        d["args"][0]: [s["args"][0] for s in d["block"] if s["directive"] == "server"]
        for d in directives
        if d["directive"] == "upstream"
    }
    (server,) = [d for d in directives if d["directive"] == "server"]
    block = server["block"]
    return Gateway(
        listens={int(d["args"][0].rsplit(":", 1)[-1]) for d in block if d["directive"] == "listen"},
        locations=[d for d in block if d["directive"] == "location"],
        upstreams=upstreams,
    )


def _route_paths(app: App, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import complaints_shared.http

    monkeypatch.setattr(complaints_shared.http, "configure_logging", lambda **_: None)
    application = importlib.import_module(f"{app.package}.main").create_app()
    # The OpenAPI document lists every public route, however routers are nested.
    return sorted(path for path in application.openapi()["paths"] if path.startswith("/v1/"))


@pytest.mark.parametrize("name", SERVERS)
def test_every_v1_route_of_a_service_reaches_it_through_the_gateway(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = SERVERS[name]
    paths = _route_paths(app, monkeypatch)
    assert paths, f"{name} serves no /v1 routes"
    routes = gateway()
    for path in paths:
        sample = re.sub(r"\{[^}]+\}", "sample-id", path)
        targets = routes.targets(routes.location(sample))
        assert targets == {(name, app.port)}, (
            f"{name} serves {path} on port {app.port}; the gateway sends it to "
            f"{sorted(targets) or 'no service'}"
        )


@pytest.mark.parametrize("path", INTERNAL_PATHS)
def test_the_gateway_does_not_expose_operational_endpoints(path: str) -> None:
    routes = gateway()
    assert routes.targets(routes.location(path)) == set(), f"the gateway proxies {path}"


def _server_block() -> list[dict[str, Any]]:
    parsed = crossplane.parse(
        str(GATEWAY_CONF), single=True, comments=False, check_ctx=False, check_args=False
    )
    (server,) = [d for d in parsed["config"][0]["parsed"] if d["directive"] == "server"]
    return server["block"]


def test_every_answer_the_gateway_gives_itself_is_a_problem() -> None:
    """A request nginx cannot read (raw UTF-8 in the query, a request line over 16 KiB, an
    unknown method) was answered in plain text or HTML until 6 December; every error page
    leads to a location answering RFC 9457 problem+json with the status it stands for."""
    block = _server_block()
    locations = {tuple(d["args"]): d["block"] for d in block if d["directive"] == "location"}
    pages = [d["args"] for d in block if d["directive"] == "error_page"]
    covered = {int(code) for args in pages for code in args[:-2]}
    assert {400, 404, 413, 414, 502, 503, 504} <= covered
    for args in pages:
        target, answered = args[-1], int(args[-2].lstrip("="))
        where = (target,) if target.startswith("@") else ("=", target)
        answer = locations[where]
        types = [d["args"] for d in answer if d["directive"] == "default_type"]
        assert types == [["application/problem+json"]], target
        (returned,) = [d["args"] for d in answer if d["directive"] == "return"]
        assert int(returned[0]) == answered, target
        problem = json.loads(returned[1])
        assert problem["status"] == answered and problem["type"].startswith("https://"), target
    # The rewrites into those locations, and what the raw-bytes test selects.
    maps = {
        tuple(d["args"]): d["block"]
        for d in crossplane.parse(
            str(GATEWAY_CONF), single=True, comments=False, check_ctx=False, check_args=False
        )["config"][0]["parsed"]
        if d["directive"] == "map"
    }
    (raw,) = [
        entry["directive"]
        for entry in maps[("$request_uri", "$raw_request_line")]
        if entry["args"] == ["1"]
    ]
    pattern = re.compile(raw.lstrip("~"))
    for sent in ("/v1/complaints?q=宽带", "/v1/complaints?q=\x7f", "/v1/x?q=a b"):
        assert pattern.search(sent), sent
    for sent in ("/v1/complaints?q=%E5%AE%BD%E5%B8%A6&sort=-created_at", "/v1/complaints"):
        assert not pattern.search(sent), sent
    methods = {
        entry["directive"]
        for entry in maps[("$request_method", "$unknown_method")]
        if entry["args"] == ["0"]
    }
    assert {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} <= methods
