"""JSON Schema export of the wire contract: every event, the decision record and the policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from baton.schemas.decision import DECISION_ADAPTER, Reason
from baton.schemas.events import CONTROL_EVENT_TYPES, RUN_EVENT_TYPES
from baton.schemas.policy import Policy

__all__ = ["NAMES_COMMENT", "json_schemas", "write_json_schemas"]

#: the name rule (baton.schemas.names), which a JSON Schema pattern cannot say: for clients in
#: other languages, next to the fields it applies to
NAMES_COMMENT = (
    "Names (agents, tools, actions, task_kind, status, tenant, approver, operator) hold "
    "printable characters of one script (digits included; ASCII digits go with any), at least "
    "one letter or digit, no space and no invisible or blank character, else the event "
    "is a bad_name dead letter; Baton compares and records them folded (NFKC, then case "
    "folded), at most 256 characters. Ids (run_id, task_id, request_id) are compared exactly."
)


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema, one per event type, plus the decision and the policy."""
    out: dict[str, dict[str, Any]] = {}
    for model in (*RUN_EVENT_TYPES, *CONTROL_EVENT_TYPES):
        name = model.model_fields["type"].default
        schema = model.model_json_schema()
        schema["$comment"] = NAMES_COMMENT
        out[f"{name}.schema.json"] = schema
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
