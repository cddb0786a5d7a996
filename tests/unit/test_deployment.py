"""docker-compose.yml and the example policy stay true to the code (no Docker engine here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from baton.schemas.policy import load_policy
from baton.schemas.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_every_baton_variable_in_compose_is_a_setting_the_code_reads() -> None:
    names = set()
    for service in _compose()["services"].values():
        names |= {k for k in (service.get("environment") or {}) if k.startswith("BATON_")}
    fields = {f"BATON_{name.upper()}" for name in Settings.model_fields}
    assert names, "compose sets no BATON_* variable"
    assert names <= fields, f"not read by the code: {sorted(names - fields)}"


def test_compose_values_are_valid_settings() -> None:
    for name, service in _compose()["services"].items():
        env = {
            k[len("BATON_") :].lower(): v
            for k, v in (service.get("environment") or {}).items()
            if k.startswith("BATON_") and v != ""
        }
        Settings(**env)  # raises on a value the code would refuse
        assert name


def test_compose_runs_two_workers_of_one_group_and_the_audit() -> None:
    services = _compose()["services"]
    workers = [s for s in services.values() if s.get("command") == ["worker"]]
    assert len(workers) == 2
    assert {w["environment"]["BATON_APP_ID"] for w in workers} == {"baton"}
    assert services["sink"]["command"][0] == "sink" and services["alerts"]["command"] == ["alerts"]
    assert "KRaft" in (ROOT / "docker-compose.yml").read_text()
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_example_policy_is_valid() -> None:
    policy = load_policy(ROOT / "policy.example.yaml")
    assert policy.for_tenant("acme").max_handoffs == 20
    assert policy.for_tenant("other").max_handoffs == 8
