"""Who may answer an approval (``multi_agent.approval``), and the keys signers are known by."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from baton.schemas.names import MAX_NAME
from baton.schemas.policy_types import Globs, StrictModel, name_keyed
from baton.schemas.signing import SigningKeyError, parse_public_key

__all__ = ["MAX_APPROVAL_TTL_S", "ApprovalPolicy", "OperatorKeys", "PublicKeys"]


def _public_key(text: str) -> str:
    try:
        parse_public_key(text, "key")
    except SigningKeyError as exc:
        raise ValueError(str(exc).removeprefix("key: ")) from None
    return text


def _one_name_per_key(keys: dict[str, str]) -> dict[str, str]:
    """A public key listed under two operators (a line copied for a new operator, its key
    left as it was) let its holder sign as both: as another operator, which the audit then
    names. Refused, naming both."""
    seen: dict[bytes, str] = {}
    for name, text in keys.items():
        # by its bytes: base64's last character has spare bits that decoding ignores, so one
        # key has four spellings (compared as text, two of them let one holder sign as both)
        first = seen.setdefault(parse_public_key(text).public_bytes_raw(), name)
        if first != name:
            raise ValueError(
                f"{first} and {name} hold the same public key: a key is one signer's "
                "(`baton keys new NAME` makes one per name)"
            )
    return keys


#: name -> "ed25519:<base64>": a public key the policy trusts for that name; names are
#: folded like the events' approver and operator (a signer signs its folded name)
PublicKeys = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=MAX_NAME)],
        Annotated[str, AfterValidator(_public_key)],
    ],
    name_keyed("signer names"),
]
#: ``operators``: also one name per key. Approvers' keys may repeat (a test's one holder of
#: two agents' keys); an operator's may not
OperatorKeys = Annotated[PublicKeys, AfterValidator(_one_name_per_key)]


#: the longest approval.ttl_seconds, 366 days: the expiry is a time on every approval's
#: decision, and a TTL of 1e10 s put it past what the audit's DateTime64 holds (1e12 s past
#: what Python's datetime holds: the approval's handoff raised instead of being decided)
MAX_APPROVAL_TTL_S = 366 * 86400


class ApprovalPolicy(StrictModel):
    """Who may answer an ``approval_required`` decision, and for how long it waits."""

    ttl_seconds: Annotated[float, Field(gt=0, le=MAX_APPROVAL_TTL_S, allow_inf_nan=False)] = Field(
        900.0,
        description="seconds an approval waits for an answer (at most 366 days); none in "
        "time, or a grant after it, ends in `stop approval_expired`",
    )
    approvers: Globs = Field(
        default_factory=lambda: ["*"],
        description='who may approve (globs over approver names); "*" = anyone but the '
        "requesting agent; anyone else is refused (`recorded approver_not_permitted`)",
    )
    allow_self_approval: bool = Field(
        False,
        description="an approver equal to the agent that asked for the handoff is refused "
        "(`recorded self_approval`) unless this is on",
    )
    keys: PublicKeys = Field(
        default_factory=dict,
        description="approver name -> public key (`ed25519:<base64>`, from `baton keys new`); "
        "when set, a grant or denial counts only when signed by the key of the approver it "
        "names (baton.schemas.signing.approval_payload)",
    )
    max_signature_age_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        3600.0,
        description="how old a signature may be when it arrives (a grant signed long ago is "
        "refused: `recorded signature_expired`)",
    )
