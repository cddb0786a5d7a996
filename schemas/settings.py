"""Runtime settings of every Baton process: one pydantic-settings model, env prefix ``BATON_``.

Built once at the edge (the CLI) and passed down; nothing else reads the environment.
Every field here is documented in ``baton --help`` and usable in ``docker-compose.yml``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from baton.schemas.connections import checked_bootstrap, connection_problems, kafka_config
from baton.schemas.errors import ConfigError
from baton.schemas.key_files import chain_key_problem, read_key_files
from baton.schemas.redact import mask_credentials
from baton.sinks.schema import MAX_AUDIT_TTL_DAYS

__all__ = ["MAX_RETENTION_S", "MAX_TIMEOUT_S", "Settings", "checked_bootstrap"]

#: the longest wait a timeout setting may name (a socket timeout of 1e300 s raised OverflowError)
MAX_TIMEOUT_S = 3600.0
#: the longest a retention or hold may be (10 years): `now - timedelta(run + tombstone
#: retention)`, the restore's window, overflowed past about 2,000 years
MAX_RETENTION_S = 10 * 365 * 86400.0
#: the default bound on a fetched batch decompressed (processors/fetch_bound.py): a batch of
#: the SDK's producer is at most ~1 MiB uncompressed (librdkafka's batch.size,
#: streams/kafka.py), a Java producer's 1 MB compressed batch of JSON events (~4-8x) still
#: fits; a bomb costs at most this per partition being read. Here, not in fetch_bound, so
#: that reading the settings does not import the codecs (every command, every SDK client)
DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES = 8 * 1024 * 1024
#: the least the setting may be: one event at Baton's 64 KB limit with its framing always fits
MIN_MAX_DECOMPRESSED_BATCH_BYTES = 128 * 1024
#: topic_prefix and app_id are parts of topic names (Kafka: [a-zA-Z0-9._-], 249 at most)
MAX_TOPIC_PART = 200
_TOPIC_PART = re.compile(rf"[A-Za-z0-9._-]{{0,{MAX_TOPIC_PART}}}")


class Settings(BaseSettings):
    # inf and nan are no number of seconds or bytes: "inf" passed gt=0 and raised OverflowError
    # where it was used (a socket timeout, int(ms), now - timedelta(retention))
    # hide_input_in_errors: a ValidationError's text repeats no value (a password in a DSN or a
    # bootstrap); build_settings names each problem with the value, credentials masked
    model_config = SettingsConfigDict(
        env_prefix="BATON_", extra="ignore", allow_inf_nan=False, hide_input_in_errors=True
    )

    # --- Kafka -------------------------------------------------------------------------
    bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, HOST:PORT[,..]")
    topic_prefix: str = Field("", description="prefix for every topic name, e.g. 'staging.'")
    # librdkafka refuses more than 100,000 partitions (a ValueError traceback from `baton up`),
    # Kafka a replication factor past its int16
    partitions: int = Field(
        8,
        ge=1,
        le=100_000,
        description="partitions of the run-keyed topics: made with this many, and checked to"
        " have this many before a command writes to them",
    )
    replication_factor: int = Field(
        1, ge=1, le=32_767, description="replication factor at topic creation"
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="Kafka transport: SSL or SASL_SSL encrypt (and check the brokers against "
        "ssl_cafile); SASL_* authenticate with sasl_mechanism/username/password",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (needed with SASL_SSL / SASL_PLAINTEXT)"
    )
    sasl_username: str | None = Field(
        None, description="SASL user (its password: BATON_SASL_PASSWORD, never a flag)"
    )
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (a secret: masked when printed; the variable only)"
    )
    ssl_cafile: Path | None = Field(
        None, description="CA certificate(s), PEM, that signed the brokers' (system CAs if unset)"
    )
    ssl_certfile: Path | None = Field(
        None, description="client certificate, PEM, for Kafka mTLS (needs ssl_keyfile)"
    )
    ssl_keyfile: Path | None = Field(
        None,
        description="private key, PEM, of ssl_certfile (its password: BATON_SSL_KEY_PASSWORD, "
        "never a flag)",
    )
    ssl_key_password: SecretStr | None = Field(
        None, description="password of an encrypted ssl_keyfile (a secret: masked when printed)"
    )
    session_timeout_s: float = Field(
        10.0,
        # 0.0001 passed gt=0 and was session.timeout.ms 0, which librdkafka refuses (a
        # traceback from the sink); Kafka's own floor is 6 s
        ge=1.0,
        le=MAX_TIMEOUT_S,
        description="consumer group session timeout; failover takes about this long",
    )
    connect_timeout_s: float = Field(
        10.0, gt=0, le=MAX_TIMEOUT_S, description="give up reaching Kafka after this"
    )

    # --- worker ------------------------------------------------------------------------
    app_id: str = Field("baton", description="Faust app id = consumer group of the workers")
    policy: Path | None = Field(None, description="policy YAML; the seed policy when unset")
    web_port: int = Field(6066, ge=0, le=65535, description="Faust web port (0 = pick a free one)")
    worker_data_dir: Path = Field(Path(".baton/worker"), description="Faust table state directory")
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="at_least_once: redeliveries are deduplicated by request_id; exactly_once: "
        "one Kafka transaction per batch (decisions, states, offsets), read them read_committed",
    )
    worker_producer: Literal["aiokafka", "librdkafka"] = Field(
        "aiokafka",
        description="at_least_once: the worker's producer; aiokafka sends a batch's records "
        "in one request per broker, librdkafka one per partition (exactly_once: librdkafka)",
    )
    consumer_loop: Literal["thread", "inline"] = Field(
        "thread",
        description="where the worker's Kafka consumer runs: Faust's own thread, or inline on "
        "the worker's event loop (no thread hop a fetch: less CPU at small batches; a batch "
        "step holding the loop past 2/3 of the session timeout then ends the worker "
        "uncommitted: set the session timeout well above the slowest batch)",
    )
    transactional_id: str | None = Field(
        None,
        description="exactly_once: this worker's transactional.id (default APP_ID-HOST-PID); "
        "give each worker a stable one (e.g. its pod name) so a restart fences its old self",
    )
    transaction_timeout_ms: int = Field(
        10_000,
        ge=1000,
        # Kafka's default transaction.max.timeout.ms; the PID request carries an int32
        le=900_000,
        description="exactly_once: a crashed worker's open transaction holds back readers of "
        "its partitions this long; a worker restoring runs waits this + 5 s for a transaction "
        "left open on the changelog before it ends (78)",
    )
    run_retention_s: float = Field(
        3600.0,
        gt=0,
        le=MAX_RETENTION_S,
        description="a run idle this many seconds (finished or not, no approval pending) is "
        "evicted to a tombstone: a later handoff of it is stopped (its stop reason, "
        "run_finished, or run_expired) and a later cost still counts",
    )
    tombstone_retention_s: float = Field(
        30 * 86400.0,
        gt=0,
        le=MAX_RETENTION_S,
        description="forget an evicted run's tombstone (tenant, counters, spend, stop) after "
        "this many seconds; its run id is then new again",
    )
    hold_idle_s: float = Field(
        30.0,
        gt=0,
        le=MAX_RETENTION_S,
        description="keep a run no event touched for this many seconds compressed in memory "
        "(~0.9 KB instead of ~3.3 KB decoded); its next event decodes it (~30 us more)",
    )
    fast_restore: bool = Field(
        True,
        description="read a worker's new changelog partitions with librdkafka before Faust's "
        "recovery (~10x faster a failover); false: Faust's recovery reads them whole",
    )
    spill_replies: bool = Field(
        True,
        description="keep a decoded run's kept replies (what a retry is answered with) in "
        "a spill file under worker_data_dir instead of the process's memory (~1 KB less a "
        "long run; the page cache holds the file); false: packed in memory",
    )
    spill_max_bytes: int = Field(
        4 << 30,
        ge=16 << 20,
        le=1 << 40,
        description="the spill file's segments at most, garbage included (a decoded long "
        "run's kept replies take ~3.5 KB of it); past it kept replies are packed in memory",
    )
    run_state_max_bytes: int = Field(
        256 * 1024,
        ge=4096,
        # a run stopped at the budget still grows by its bounded window (~200 KB of ids and
        # replies) and must stay under the 900,000 bytes no state record may pass
        le=600_000,
        description="a run whose encoded state would pass this is stopped (run_state_limit); "
        "keep it well under Kafka's 1 MB message limit",
    )
    max_runs: int = Field(
        500_000,
        ge=1,
        le=100_000_000,
        description="runs (and tombstones) one worker holds; past it, new runs are stopped "
        "(worker_run_limit) until old ones are evicted or workers are added",
    )
    max_state_bytes: int = Field(
        4 * 1024**3,
        ge=1024**2,
        le=1024**4,
        description="encoded run state one worker holds (memory is ~1.6x, up to ~2.6x for "
        "runs with long ids); past it, new runs are stopped (worker_run_limit) like past max_runs",
    )
    control_max_staleness_s: float = Field(
        15.0,
        ge=1.0,
        le=3600.0,
        description="a worker whose kill switches (the control topic, read to its end) are "
        "older than this stops deciding until it reads them again (clients fail closed); "
        "after 10x this it exits (76) for a restart",
    )
    fetch_max_wait_ms: int = Field(
        10,
        ge=1,
        le=300_000,  # librdkafka's bound on fetch.wait.max.ms (a fetch request's int32)
        description="worker fetch wait; Tansu holds every fetch this long, Kafka "
        "answers when data arrives (100-500 is fine there)",
    )
    # a record batch is decompressed by aiokafka before Baton sees one byte of it: a 1 MB
    # lz4 batch of zeros inflated to 250 MB (processors/fetch_bound.py)
    max_decompressed_batch_bytes: int = Field(
        DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES,
        ge=MIN_MAX_DECOMPRESSED_BATCH_BYTES,
        le=2**31 - 1,
        description="a compressed record batch the worker fetches is decompressed to this "
        "many bytes at most; one inflating past it (or not decompressing) is not decided: "
        "one dead letter names its offsets (batch_too_large / batch_undecodable)",
    )
    batch_size: int = Field(
        10_000,
        ge=1,
        le=100_000,
        description="max events per worker batch (the records one fetch hands the worker; "
        "a batch is one fetch, so the fetch wait is how long it fills; a fetch's bytes "
        "bound it too, ~1 MB per partition)",
    )

    commit_interval_s: float = Field(
        1.0,
        ge=0.05,
        le=MAX_TIMEOUT_S,
        description="at-least-once: the worker commits the offsets of decided events this "
        "often; a worker killed in between has its successor read up to this much again "
        "(each run's state knows the position it read: answered from its memory or not again; "
        "docs/guarantees.md)",
    )

    # --- audit (ClickHouse) ------------------------------------------------------------
    clickhouse_dsn: str = Field(
        "chdb:.baton/chdb",
        description="ClickHouse target: http(s)://user:pass@host:8123/db, chdb:///abs/dir or "
        "chdb:rel/dir (the default is `baton up`'s embedded audit in ./.baton)",
    )
    clickhouse_ca: Path | None = Field(
        None,
        description="CA certificate(s), PEM, that signed the ClickHouse server's, for an "
        "https:// DSN (system CAs if unset)",
    )
    clickhouse_verify: bool = Field(
        True,
        description="check the ClickHouse server's TLS certificate and host name (https://); "
        "false only for a throwaway test server",
    )
    clickhouse_timeout_s: float = Field(
        30.0,
        gt=0,
        le=MAX_TIMEOUT_S,
        description="give up on a ClickHouse server's answer after this many seconds "
        "(http(s):// DSNs; the sink then retries)",
    )
    audit_ttl_days: int = Field(
        365,
        ge=1,
        le=MAX_AUDIT_TTL_DAYS,
        description="keep audit rows this many days (at most 20,000: ClickHouse reckons a "
        "TTL in DateTime, whose last second is in 2106, and a TTL past it wraps to the past "
        "and drops every row at insert)",
    )
    audit_chain_key: SecretStr | None = Field(
        None,
        description="secret key of the runs' decision hash chains (the same on every worker "
        "and for `baton audit verify`); without it the chains detect deleted and altered rows, "
        "with it also forged ones appended by someone without the key, and the workers seal "
        "each command's record (a `baton up` restart re-issues only sealed commands)",
    )
    audit_chain_key_file: Path | None = Field(
        None,
        description="a file holding the chain key instead (mode 600; `baton keys chain FILE`)",
    )
    decision_signing_key: Path | None = Field(
        None,
        description="the workers' Ed25519 private key file (`baton keys new`): each decision "
        "is published signed with it (`baton up` makes DATA_DIR/worker/decision.key)",
    )
    decision_keys: str = Field(
        "",
        description="the workers' public keys (`ed25519:…`, comma-separated): SDK clients and "
        "commands take only decisions one of them signed (unset: any record on gov.decisions)",
    )
    decision_keys_file: Path | None = Field(
        None,
        description="a file holding the workers' public keys instead of decision_keys "
        "(`baton keys new NAME --public-out FILE`)",
    )
    sink_batch_size: int = Field(
        20_000,
        ge=1,
        le=1_000_000,
        description="most decisions in one audit insert (a quarter of it goes as soon as the "
        "writer is free); ~3 KB of memory a decision, twice: one batch filling, one in flight",
    )
    sink_batch_timeout_s: float = Field(  # (ge: 1e-300 spun an idle sink's core, H2 s. 27)
        1.0, ge=0.01, le=MAX_TIMEOUT_S, description="longest a batch waits to fill, in seconds"
    )
    sink_max_receive_bytes: int = Field(
        320_864_768,
        ge=2 * 1024 * 1024,
        le=2_147_483_647,
        description="largest Kafka fetch answer the sink receives (librdkafka's "
        "receive.message.max.bytes); it costs ~2x its size in memory. The default holds the "
        "largest batch Tansu takes (256 MiB) after a fetch's worth (50 MiB) of others; a batch "
        "past it stalls its partition (baton_audit_oversized_answers counts the refusals)",
    )
    sink_parse_processes: int = Field(
        2,
        ge=0,
        le=16,
        description="processes that parse and encode the sink's records beside the one that "
        "reads Kafka and writes ClickHouse (chDB opens a directory in one process only; ~120 MB "
        "each); 0: the sink's own process parses",
    )

    # --- alerts ------------------------------------------------------------------------
    webhook_url: SecretStr | None = Field(
        None,
        description="Slack-compatible webhook for stop alerts (a secret: masked when printed; "
        "prefer BATON_WEBHOOK_URL over --webhook-url, which `ps` shows)",
    )

    # --- operations (processors/metrics.py, cli/log_format.py) -------------------------
    metrics_port: str = Field(
        "off",
        description="port of the Prometheus /metrics endpoint of a worker, sink or alerter "
        "(0 = a free one, printed on start; off = none; `baton up` picks them)",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="address the /metrics endpoint listens on (0.0.0.0 lets a Prometheus in "
        "another container scrape it)",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="stderr log lines as text, or json: one object per line (time, level, "
        "component, run_id, message)",
    )

    @field_validator("topic_prefix", "app_id")
    @classmethod
    def _topic_name_part(cls, value: str, info: ValidationInfo) -> str:
        # both become part of topic names (app_id: the workers' changelog topics), which Kafka
        # allows of [a-zA-Z0-9._-] and 249 characters at most; a prefix 'a/b' or '../x' was
        # taken as given (Tansu's memory store took it; a broker storing on disk, its path)
        if not _TOPIC_PART.fullmatch(value) or (info.field_name == "app_id" and not value):
            at_least = "" if info.field_name == "topic_prefix" else ", not empty"
            raise ValueError(
                "expected letters, digits, '.', '_' or '-' (part of Kafka topic names), at most "
                f"{MAX_TOPIC_PART} characters{at_least}"
            )
        return value

    @field_validator("bootstrap")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        return checked_bootstrap(value)

    @field_validator("audit_chain_key")
    @classmethod
    def _chain_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and (problem := chain_key_problem(value.get_secret_value())):
            raise ValueError(problem)
        return value

    @field_validator("audit_chain_key_file", "decision_keys_file", mode="before")
    @classmethod
    def _key_file_path(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():  # `${X:-}`: "." was "a directory"
            raise ValueError("empty; unset it, or name the file")
        return value

    @model_validator(mode="after")
    def _key_files(self) -> Settings:
        return read_key_files(self)  # schemas/key_files.py: never a variable and its file

    @field_validator("decision_signing_key", mode="before")
    @classmethod
    def _signing_key(cls, value: Any) -> Any:
        # "" became Path("."): "key file .: ... a directory" (`${KEY:-}` in a compose file)
        if isinstance(value, str) and not value.strip():
            raise ValueError("empty; unset it to sign nothing, or name the workers' key file")
        return value

    @field_validator("decision_keys")
    @classmethod
    def _decision_keys(cls, value: str) -> str:
        from baton.schemas.decision_signing import decision_keys
        from baton.schemas.signing import SigningKeyError

        try:  # a key that does not read: named with its variable before anything connects
            decision_keys(value, "keys", unset="")
        except SigningKeyError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _metrics_port(cls, value: Any) -> str:
        text = str(value).strip().lower()
        if text in ("off", "none", ""):
            return "off"
        if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
            raise ValueError(f"expected a port 0-65535 or off, got {str(value)[:40]!r}")
        return str(int(text))

    @property
    def metrics_port_number(self) -> int | None:
        """The /metrics port (0: pick one), or None when metrics are off."""
        return None if self.metrics_port == "off" else int(self.metrics_port)

    def kafka_config(self) -> dict[str, str]:
        """librdkafka properties shared by every confluent-kafka client we create."""
        return kafka_config(self)

    @model_validator(mode="after")
    def _check_connections(self) -> Settings:
        # a ConfigError, not a ValueError: pydantic would wrap a ValueError with the whole
        # input, secrets included, and the CLI would print it
        problems = connection_problems(self)
        if problems:
            raise ConfigError("invalid connection settings: " + "; ".join(problems))
        return self

    def __repr_args__(self) -> Any:
        # SecretStr fields print as '**********'; a DSN is a plain string that may carry one
        for name, value in super().__repr_args__():
            yield name, mask_credentials(value) if isinstance(value, str) else value
