"""Environment-driven settings shared by every service.

Every field but ``service_name`` reads from an upper-case environment variable of the same
name (``KAFKA_BOOTSTRAP_SERVERS``, ``MONGODB_URI`` ...). Service-specific settings
classes subclass :class:`ServiceSettings` and add their own fields.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

MIN_DEAD_LETTER_RETENTION_MS = 86_400_000
# Fields the environment does not set (``ServiceSettings.service_name``).
FIXED = frozenset({"service_name"})


class ServiceSettings(BaseSettings):
    """Settings every service needs: infrastructure, auth, consumer tuning."""

    model_config = SettingsConfigDict(
        env_file=None,
        extra="ignore",
        case_sensitive=False,
        # A refused setting is named, never quoted: the error of a whole-settings check
        # quoted the input's tail, a Kafka password among it.
        hide_input_in_errors=True,
    )

    # Fixed by each service's class, never read from the environment: it names the consumer
    # group and the default database, and a platform that sets ``SERVICE_NAME`` on every
    # container (a logging convention) put all four services in one group and one database.
    service_name: str = Field("service", description="Name used in logs, metrics and ce_source.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource | Callable[[], dict[str, Any]], ...]:
        def environment() -> dict[str, Any]:
            return {name: value for name, value in env_settings().items() if name not in FIXED}

        return init_settings, environment, dotenv_settings, file_secret_settings

    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Comma-separated Kafka bootstrap servers."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How the clients reach the brokers: `SASL_SSL` for a managed cluster "
        "that asks for credentials over TLS, `SSL` for TLS alone, `SASL_PLAINTEXT` for "
        "credentials on a private network.",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="The SASL mechanism the brokers ask for (with `SASL_*` only)."
    )
    kafka_sasl_username: str = Field("", description="The SASL user (with `SASL_*` only).")
    kafka_sasl_password: SecretStr = Field(
        SecretStr(""), description="The SASL user's password (with `SASL_*` only)."
    )
    kafka_ssl_cafile: str = Field(
        "",
        description="A PEM file of the CA certificates that signed the brokers' certificates "
        "(with `SSL` / `SASL_SSL`); empty: the system's CAs. Read at start.",
    )
    mongodb_uri: str = Field("mongodb://127.0.0.1:27017", description="MongoDB connection URI.")
    mongodb_max_idle_time_ms: int = Field(
        60_000,
        ge=1,
        description="A pooled connection idle this long is closed and replaced by the client, "
        "before a server, balancer or firewall drops it silently (SecantusDB closes idle "
        "connections after 300 s, cloud balancers after 240-350 s): keep it below them.",
    )
    mongodb_heartbeat_frequency_ms: int = Field(
        10_000,
        ge=500,
        description="How often the client checks the server; also keeps its monitoring "
        "connections busy, so keep it below every idle limit too.",
    )
    mongodb_server_selection_timeout_ms: int = Field(
        5_000,
        ge=1,
        description="How long an operation waits for a usable server (failover, restart) "
        "before it fails; a request then answers 503 with Retry-After.",
    )
    mongodb_connect_timeout_ms: int = Field(
        5_000, ge=1, description="Timeout of opening one connection to the server."
    )
    startup_dependency_wait_s: float = Field(
        60.0,
        ge=0,
        description="How long start-up waits for the database to answer (its indexes and "
        "start-up repairs) before the process gives up and exits (a supervisor restarts "
        "it); it serves nothing meanwhile.",
    )
    mongodb_database: str = Field(
        "", description="Database owned by this service; defaults to complaints_<service>."
    )
    topic_prefix: str = Field(
        "", description="Prefix for every topic and consumer group (used to isolate tests)."
    )
    topic_partitions: int = Field(
        6,
        ge=1,
        description="Partitions for topics created at start-up: how many records of a topic one "
        "replica handles side by side (each partition's in order), and the most replicas of a "
        "service that consume it.",
    )
    topic_replication_factor: int = Field(1, ge=1, description="Replication for created topics.")
    dead_letter_retention_ms: int = Field(
        -1,
        ge=-1,
        description="How long a dead-letter topic created at start-up keeps its records (and the "
        "dead-letter tool its ledger of replays): -1, until deleted. Each dead letter is work "
        "not done until someone replays it; the broker's default (7 days) lost those nobody "
        "looked at in time. Topics created before keep their own setting.",
    )
    consumer_max_attempts: int = Field(
        5,
        ge=1,
        description="Attempts of a handler failing with an unexpected error before the "
        "message goes to the dead-letter topic (retries_exhausted). Transient failures "
        "(database or broker away) are retried without limit and never dead-lettered.",
    )
    consumer_commit_interval_s: float = Field(
        1.0,
        ge=0,
        description="How often a consumer commits the offsets of the records it has handled "
        "(0: after every poll). A crash redelivers at most about this long of handled records, "
        "which the idempotent handlers absorb; a commit per record cost the broker a request "
        "each. Partitions given up (rebalance, shutdown) are always committed first.",
    )
    consumer_retry_backoff_s: float = Field(
        0.2, gt=0, description="First retry delay; doubles on each further attempt."
    )
    consumer_retry_backoff_max_s: float = Field(
        10.0,
        gt=0,
        description="Longest delay between two attempts of a stalled partition, so it "
        "resumes within about this long after the dependency is back.",
    )
    timer_retry_backoff_s: float = Field(
        5.0,
        gt=0,
        description="Delay before a timer document that failed to fire (an SLA assignment, "
        "a follow-up check) is tried again; doubles per failure.",
    )
    timer_retry_backoff_max_s: float = Field(
        300.0, gt=0, description="Longest delay between two tries of a failing timer document."
    )
    outbox_poll_interval_s: float = Field(
        0.5,
        gt=0,
        description="How often the outbox relay looks for events nobody told it about (written "
        "by a standby replica, or left by a failure) while such events keep turning up; writes "
        "of its own replica wake it at once.",
    )
    outbox_idle_poll_interval_s: float = Field(
        2.0,
        gt=0,
        description="Longest pause between the relay's polls of a collection: each poll that "
        "finds nothing doubles the pause from outbox_poll_interval_s up to this; also the "
        "longest the first event a standby replica writes after a quiet spell waits.",
    )
    outbox_release_delay_s: float = Field(
        3.0,
        ge=0,
        description="How long a document's published events wait for its next write to take "
        "them out before the relay removes them, in one write for all that have waited it "
        "(0: one write per batch). A crash within it only publishes them again.",
    )
    outbox_release_max_documents: int = Field(
        2000,
        ge=1,
        description="Documents whose published events the relay collects at most before it "
        "removes them, whatever outbox_release_delay_s says (and while the pipeline runs "
        "behind). Each of the relay's polls reads every document still pending, these too.",
    )
    background_work_share: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Share of the wall time a background job's pass (the report rollup, the "
        "load-hint recount, the webhooks' repair pass) spends working while it runs, read and "
        "written in short steps; it waits the rest, so a large pass never holds up requests "
        "and events (1: no pauses).",
    )
    outbox_batch_size: int = Field(
        100, ge=1, description="Documents the outbox relay claims and publishes per round."
    )
    outbox_lease_s: float = Field(
        15.0,
        gt=0,
        description="How long one replica's relay leads publishing a collection's outbox "
        "without renewing; a crashed leader is replaced after at most this long.",
    )
    kafka_request_timeout_s: float = Field(
        10.0, gt=0, description="Producer request timeout; a slower send is retried by the relay."
    )
    jwt_secret: str = Field(
        "",
        description="HS256 secret for bearer tokens when no JWKS is configured, at least 32 "
        "bytes. No default: a service in that mode refuses to start without one (a default "
        "in a public repository is a secret anyone can sign an admin token with).",
    )
    jwt_issuer: str = Field("complaint-desk", description="Expected `iss` claim.")
    jwt_audience: str = Field("complaint-desk", description="Expected `aud` claim.")
    jwt_jwks_url: str = Field(
        "",
        description="The identity provider's JWKS; when set, only tokens signed by its keys "
        "(asymmetric algorithms) are accepted and the shared secret is not.",
    )
    jwt_oidc_discovery: bool = Field(
        False,
        description="Find the JWKS through `<JWT_ISSUER>/.well-known/openid-configuration` "
        "(when JWT_JWKS_URL is not set).",
    )
    jwt_algorithms: str = Field(
        "RS256,PS256,ES256",
        description="Comma-separated signature algorithms accepted from the JWKS; "
        "`none` and the HS family are refused.",
    )
    jwt_leeway_s: float = Field(
        30.0, ge=0, le=300, description="Clock skew tolerated on `exp`, `nbf` and `iat`."
    )
    jwt_jwks_cache_s: float = Field(
        300.0, gt=0, description="How long a fetched key set is used before it is fetched again."
    )
    jwt_jwks_refresh_cooldown_s: float = Field(
        10.0,
        ge=0,
        description="An unknown `kid` refetches the key set at most this often (a rotated key "
        "is accepted within this long; random kids cannot flood the identity provider).",
    )
    jwt_jwks_timeout_s: float = Field(
        5.0, gt=0, description="Timeout of a key set or discovery request."
    )
    jwt_claim_subject: str = Field("sub", description="Claim naming the caller.")
    jwt_claim_org: str = Field("org", description="Claim with the organisation code.")
    jwt_claim_branches: str = Field(
        "branches", description="Claim with the branch codes (a list) or `*` (all branches)."
    )
    jwt_claim_roles: str = Field(
        "roles",
        description="Claim with the roles; a dotted path reaches nested claims "
        "(`realm_access.roles`).",
    )
    jwt_role_map: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Identity-provider role → our role (JSON; empty: none); when set, roles "
        "not in the map are ignored instead of refused.",
    )
    log_level: str = Field("INFO", description="Root log level.")
    max_body_bytes: int = Field(
        262_144, ge=1024, description="Largest accepted request body; larger ones get 413."
    )
    unavailable_retry_after_s: int = Field(
        5,
        ge=1,
        description="`Retry-After` of the 503 answered while MongoDB or Kafka is unreachable.",
    )
    readiness_timeout_s: float = Field(2.0, gt=0, description="Timeout of each /readyz probe.")

    @model_validator(mode="after")
    def _kafka_security_complete(self) -> ServiceSettings:
        """Credentials for a SASL protocol, and a CA file that can be read: a service that
        cannot reach the brokers says why at start, not as retries of refused connections."""
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password.get_secret_value()
        ):
            raise ValueError(
                f"kafka_sasl_username and kafka_sasl_password are needed with {protocol}"
            )
        if self.kafka_ssl_cafile and protocol.endswith("SSL"):
            try:
                ssl.create_default_context(cafile=self.kafka_ssl_cafile)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"kafka_ssl_cafile: no CA certificates could be read from "
                    f"{self.kafka_ssl_cafile}: {exc}"
                ) from None
        return self

    @field_validator("jwt_role_map", mode="before")
    @classmethod
    def _role_map_from_json(cls, value: Any) -> Any:
        """The environment's JSON object; an empty value (compose's default, the variable
        not given) is no map, where it refused to start."""
        if isinstance(value, str | bytes):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("dead_letter_retention_ms")
    @classmethod
    def _dead_letters_kept_long_enough(cls, value: int) -> int:
        if value != -1 and value < MIN_DEAD_LETTER_RETENTION_MS:
            raise ValueError(
                "keep dead letters until deleted (-1) or a day at least "
                f"({MIN_DEAD_LETTER_RETENTION_MS}): shorter, they go before anyone replays them"
            )
        return value

    def database_name(self) -> str:
        return self.mongodb_database or f"complaints_{self.service_name}"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def consumer_group(self) -> str:
        return f"{self.topic_prefix}{self.service_name}"
