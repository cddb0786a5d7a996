"""docker-compose.yml, docker-compose.sasl.yml and the example policy stay true to the code
(no Docker engine here): every BATON_* variable is a setting with a value the code accepts -
TLS files included, found through the service's volume mounts - every published port is on
127.0.0.1, and no password is written in a file."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from baton.processors.engine import rules_for
from baton.schemas.policy import load_policy
from baton.schemas.settings import Settings
from tests.tls_support import Pki, make_pki

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.sasl.yml"]
#: Settings fields that name a file inside the container
PATH_FIELDS = {
    name for name, info in Settings.model_fields.items() if "Path" in str(info.annotation)
}


def _compose(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def _baton_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in (service.get("environment") or {}).items() if k.startswith("BATON_")}


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$`` with ``env``."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        if op == ":-":
            return arg or ""
        raise AssertionError(f"compose needs ${name} ({arg or 'no default'})")

    value = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}", one, value)
    return value.replace("$$", "$")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def host_tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What docs/security.md tells users to put in ./tls, made from the test CA."""
    tls = tmp_path_factory.mktemp("tls")
    for name, source in {
        "ca.pem": pki.ca,
        "baton.crt": pki.client_cert,
        "baton.key": pki.client_key_encrypted,
        "clickhouse.crt": pki.server_cert,
        "clickhouse.key": pki.server_key,
        "kafka.pem": pki.server_cert,
    }.items():
        (tls / name).write_bytes(source.read_bytes())
    return tls


def _dot_env(pki: Pki) -> dict[str, str]:
    """The .env the SASL variant asks for."""
    return {
        "KAFKA_ADMIN_PASSWORD": "admin-pw",
        "KAFKA_BATON_PASSWORD": "baton-pw",
        "CLICKHOUSE_PASSWORD": "ch-pw",
        "TLS_KEY_PASSWORD": pki.client_key_password,
    }


def _made_chain_key(folder: Path) -> Path:
    """The key file the compose files' keys service makes, made by its command here."""
    from click.testing import CliRunner

    from baton.cli.main import _register, cli

    path = folder / "chain.key"
    if not path.exists():
        _register()
        result = CliRunner().invoke(cli, ["keys", "chain", str(path)])
        assert result.exit_code == 0, result.output
    return path


def _made_signing_key(folder: Path) -> tuple[Path, Path]:
    """The private and the public key files the compose files' signing-key service makes."""
    from click.testing import CliRunner

    from baton.cli.main import _register, cli

    private, public = folder / "keys" / "workers.key", folder / "workers.pub"
    _register()
    args = ["keys", "new", "workers", "--dir", str(private.parent), "--keep"]
    result = CliRunner().invoke(cli, [*args, "--public-out", str(public)])
    assert result.exit_code == 0, result.output
    return private, public


def _host_path(service: dict[str, Any], inside: str, host_tls: Path) -> Path:
    """The host file a container path comes from, through the service's volume mounts
    (``./tls`` stands for ``host_tls``); fails when no mount provides it."""
    path = PurePosixPath(inside)
    for volume in service.get("volumes") or []:
        parts = volume.split(":")
        if len(parts) < 2 or not parts[0].startswith("./"):
            continue  # a named volume
        source, target = PurePosixPath(parts[0]), PurePosixPath(parts[1])
        if path == target or target in path.parents:
            assert "ro" in parts[2:], f"{volume}: TLS material and policy are mounted read-only"
            tls = source.parts[0] == "tls"
            host = host_tls.joinpath(*source.parts[1:]) if tls else ROOT.joinpath(*source.parts)
            return host.joinpath(*path.relative_to(target).parts)
    raise AssertionError(f"{inside}: no volume of the service provides it")


@pytest.mark.parametrize("compose", COMPOSE_FILES)
def test_every_baton_variable_in_compose_is_a_setting_the_code_reads(compose: str) -> None:
    names: set[str] = set()
    for service in _compose(compose)["services"].values():
        names |= set(_baton_env(service))
    fields = {f"BATON_{name.upper()}" for name in Settings.model_fields}
    assert names, "compose sets no BATON_* variable"
    assert names <= fields, f"not read by the code: {sorted(names - fields)}"


@pytest.mark.parametrize("compose", COMPOSE_FILES)
def test_compose_values_are_valid_settings(
    compose: str, pki: Pki, host_tls: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("BATON_")]:
        monkeypatch.delenv(key)
    checked = 0
    for name, service in _compose(compose)["services"].items():
        env = {
            k[len("BATON_") :].lower(): _interpolate(str(v), _dot_env(pki))
            for k, v in _baton_env(service).items()
            if v != ""
        }
        for field in PATH_FIELDS & set(env):
            if field in ("policy", "worker_data_dir"):
                continue  # the policy is checked below; the data dir is the container's own
            if field == "audit_chain_key_file":  # the keys service's volume: made as it makes it
                env[field] = str(_made_chain_key(tmp_path))
                continue
            if field in ("decision_signing_key", "decision_keys_file"):  # signing-key's volumes
                env[field] = str(_made_signing_key(tmp_path)[field == "decision_keys_file"])
                continue
            env[field] = str(_host_path(service, env[field], host_tls))
        # raises on a value the code would refuse: the TLS files are loaded, the key
        # decrypted with TLS_KEY_PASSWORD and matched against its certificate
        Settings(**env)
        checked += bool(env)
        assert name
    assert checked >= 4


@pytest.mark.parametrize("compose", COMPOSE_FILES)
def test_every_published_port_is_bound_to_loopback(compose: str) -> None:
    published = 0
    for name, service in _compose(compose)["services"].items():
        for port in service.get("ports") or []:
            spec = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port}"
            assert spec.startswith("127.0.0.1:"), f"{compose} {name}: {port} is on every interface"
            published += 1
        assert "network_mode" not in service, f"{name}: host networking bypasses the bindings"
    assert published >= 2


@pytest.mark.parametrize("compose", COMPOSE_FILES)
def test_compose_runs_two_workers_of_one_group_and_the_audit(compose: str) -> None:
    services = _compose(compose)["services"]
    workers = [s for s in services.values() if s.get("command") == ["worker"]]
    assert len(workers) == 2
    assert {w["environment"]["BATON_APP_ID"] for w in workers} == {"baton"}
    assert services["sink"]["command"][0] == "sink" and services["alerts"]["command"] == ["alerts"]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "KRaft" in (ROOT / compose).read_text()


def test_the_sasl_variant_authenticates_and_encrypts_every_connection() -> None:
    services = _compose("docker-compose.sasl.yml")["services"]
    kafka = services["kafka"]["environment"]
    protocols = dict(p.split(":") for p in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    advertised = [a.split("://")[0] for a in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")]
    # every listener a client reaches is SASL_SSL; the controller's is not advertised
    assert {protocols[name] for name in advertised} == {"SASL_SSL"}
    assert kafka["KAFKA_SSL_CLIENT_AUTH"] == "required"
    # the apache/kafka start script demands JKS keystores as soon as it sees "SSL://"
    assert "SSL://" not in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert services["clickhouse"]["ports"] == ["127.0.0.1:8443:8443"]
    for name in ("worker-1", "sink", "alerts"):
        env = _baton_env(services[name])
        assert env["BATON_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["BATON_SSL_CERTFILE"] and env["BATON_SSL_KEYFILE"] and env["BATON_SSL_CAFILE"]
        assert env["BATON_CLICKHOUSE_DSN"].startswith("https://")
        assert env["BATON_CLICKHOUSE_CA"] and env["BATON_CLICKHOUSE_VERIFY"] == "true"


@pytest.mark.parametrize("compose", COMPOSE_FILES)
def test_no_secret_is_written_in_the_sasl_variant(compose: str) -> None:
    """Passwords come from .env through ${VAR}; the plain file's baton:baton is loopback only."""
    if compose == "docker-compose.yml":
        services = _compose(compose)["services"]
        assert services["clickhouse"]["ports"] == ["127.0.0.1:8123:8123"]
        return
    for name, service in _compose(compose)["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key or "JAAS" in key:
                passwords = re.findall(r'(?:password|user_\w+)="([^"]*)"', str(value))
                passwords = passwords or [str(value)]
                for password in passwords:
                    assert password.startswith("${"), f"{name}.{key} is written in the file"
        dsn = (service.get("environment") or {}).get("BATON_CLICKHOUSE_DSN", "")
        assert not dsn or ":${CLICKHOUSE_PASSWORD" in dsn, f"{name}: DSN password in the file"


def test_example_policy_is_valid() -> None:
    policy = load_policy(ROOT / "policy.example.yaml")
    assert rules_for(policy, "acme").max_handoffs == 20
    assert rules_for(policy, "other").max_handoffs == 8
