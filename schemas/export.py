"""JSON Schema export of the wire contract: every event, the decision record and the policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from baton.schemas.decision import DECISION_ADAPTER, Reason
from baton.schemas.events import CONTROL_EVENT_TYPES, RUN_EVENT_TYPES
from baton.schemas.policy import Policy

__all__ = ["json_schemas", "write_json_schemas"]


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, one per event type, plus the decision and the policy."""
    out: dict[str, dict[str, Any]] = {}
    for model in (*RUN_EVENT_TYPES, *CONTROL_EVENT_TYPES):
        name = model.model_fields["type"].default
        out[f"{name}.schema.json"] = model.model_json_schema()
    decision = DECISION_ADAPTER.json_schema()
    # the record holds the reason as text (a stopped run keeps its reason as it was
    # recorded); the contract is the Reason enum: every reason Baton writes
    decision["properties"]["reason"]["enum"] = [r.value for r in Reason]
    out["decision.schema.json"] = decision
    out["policy.schema.json"] = Policy.model_json_schema()
    return out


def write_json_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        written.append(path)
    return written
