"""``baton doctor``'s lines on the workers' keys: the seal on operators' command records, the
key of the decisions' hash chains (``chain_key_check``), and the signature on every decision
(the last: ``decision_signing_check``).

A `baton up` restart issues again only the commands whose record a worker sealed
(``processors/control_seal``), and `baton audit verify` names an applied command record no
worker sealed: the key is what both rest on. Under `baton up` it is ``DATA_DIR/worker/
seal.key`` (made at every start when missing) unless BATON_AUDIT_CHAIN_KEY is set. A key
file removed since the stack last started is a failure: the next start makes another, and
issues no command sealed with the old one again (their kills are held until released anew).
"""

from __future__ import annotations

from pathlib import Path

from baton.cli.doctor_checks import Check, Status, fail, ok
from baton.schemas.errors import ConfigError
from baton.schemas.settings import Settings

__all__ = ["chain_key_check", "decision_signing_check", "seal_key_check"]

NAME = "seal key"


def seal_key_check(settings: Settings, data_dir: Path | None) -> Check:
    """ok naming the key the workers seal with; FAIL when a `baton up` stack's key file is
    gone or does not read; skipped (never a failure) with neither key nor stack."""
    from baton.cli.stack_record import find_stack
    from baton.cli.up_children import WORKER_DATA_DIR
    from baton.processors.control_seal import SEAL_KEY_FILE, read_seal_key

    if settings.audit_chain_key:
        from baton.schemas.key_files import key_source

        return ok(
            NAME,
            f"{key_source(settings.audit_chain_key_file)} (the workers seal operators' command "
            "records and MAC their "
            "decisions and run states: a sink given it stores no other decision, a restore "
            "takes no other state)",
        )
    found = find_stack(data_dir)
    path = found.data_dir / WORKER_DATA_DIR / SEAL_KEY_FILE
    if found.record is None:
        return Check(
            NAME,
            Status.SKIP,
            "none: the workers seal no operator's command record and restore run states unchecked",
            "set BATON_AUDIT_CHAIN_KEY: `baton audit verify` then names forged ones",
        )
    try:
        key = read_seal_key(path.parent)
    except ConfigError as exc:
        return fail(NAME, str(exc), "see the message")
    if not key:
        return fail(
            NAME,
            f"{path} is gone: the next `baton up` makes another, and issues no command sealed "
            "with this one again (their kills are held until released anew)",
            "put it back from a backup of the data dir",
        )
    return ok(
        NAME,
        f"{path} (back it up with the audit: a restart verifies with it, and the stack's sink "
        "stores no decision, its workers restore no run state, without its MAC)",
    )


CHAIN = "chain key"


def chain_key_check(settings: Settings, data_dir: Path | None) -> Check:
    """ok naming the key the workers link decisions with; FAIL when a `baton up` stack's
    chain.key does not read; skipped (never a failure) when nothing keys the chains: a forged
    row appended at a run's end then passes `baton audit verify`."""
    from baton.cli.stack_record import find_stack
    from baton.cli.up_children import WORKER_DATA_DIR
    from baton.processors.control_seal import CHAIN_KEY_FILE, chain_key_id, workers_chain_key

    found = find_stack(data_dir)
    recorded = found.record.chain_key_id if found.record is not None else None
    path = found.data_dir / WORKER_DATA_DIR / CHAIN_KEY_FILE
    try:
        key = workers_chain_key(settings, path.parent if found.record else None)
    except ConfigError as exc:
        return fail(CHAIN, str(exc), "see the message")
    if recorded and chain_key_id(key) != recorded:  # (h44 F1, F2: a start would refuse)
        return fail(
            CHAIN,
            f"the stack's audit is chained with the key stack.json names (id {recorded}), and "
            + ("this one is another" if key else f"{path} is gone")
            + ": its next start is refused",
            "put worker/chain.key back from a backup, or set or unset BATON_AUDIT_CHAIN_KEY as "
            "the stack's workers had it",
        )
    if settings.audit_chain_key:
        from baton.processors.control_seal import chain_key, chain_key_id
        from baton.schemas.key_files import key_source

        return ok(
            CHAIN,
            f"{key_source(settings.audit_chain_key_file)}, id {chain_key_id(chain_key(settings))} "
            "(the workers link every decision with it)",
        )
    unkeyed = "a forged row appended at a run's end passes `baton audit verify`"
    if found.record is None:
        return Check(
            CHAIN, Status.SKIP, f"none: {unkeyed}", "set BATON_AUDIT_CHAIN_KEY on the workers"
        )
    if not key:
        return Check(
            CHAIN,
            Status.SKIP,
            f"none: the stack's audit was begun without {path} (before Baton made one), or it "
            f"was removed: {unkeyed}",
            "a new data dir gets one; put a removed one back from a backup of the data dir",
        )
    return ok(CHAIN, f"{path} (back it up with the audit: its chains verify with it)")


SIGNING = "decision signing"


def decision_signing_check(settings: Settings, data_dir: Path | None) -> Check:
    """ok naming the key the workers sign decisions with and the keys clients check with;
    FAIL when a `baton up` stack's key file is gone, does not read, or is not the one its
    stack.json gives clients (they would take none of its decisions); skipped when nothing
    signs (docs/security.md "Signed decisions")."""
    from baton.cli.stack_record import find_stack
    from baton.cli.up_children import WORKER_DATA_DIR
    from baton.schemas.decision_signing import DECISION_KEY_FILE, decision_keys, signing_key_of

    checked = (
        f"; clients check with {settings.decision_keys[:60]}" if settings.decision_keys else ""
    )
    try:
        if settings.decision_signing_key:
            path, public = signing_key_of(settings.decision_signing_key)
            return ok(SIGNING, f"{path}, public key {public}{checked}")
        found = find_stack(data_dir)
        if found.record is None:
            return _unsigned(settings)
        path = found.data_dir / WORKER_DATA_DIR / DECISION_KEY_FILE
        recorded = found.record.decision_keys
        if recorded is None:  # a stack of a Baton before signed decisions
            return _unsigned(settings)
        if not path.exists():
            return fail(
                SIGNING,
                f"{path} is gone: the next `baton up` makes another, and clients given the "
                "old public key take none of its decisions",
                "put it back from a backup of the data dir, or give clients the new key",
            )
        public = signing_key_of(path)[1]
        decision_keys(recorded)  # (a record another user edited: named below)
    except ConfigError as exc:
        return fail(SIGNING, str(exc), "see the message")
    if public != recorded:
        return fail(
            SIGNING,
            f"{path} is not the key stack.json gives the stack's clients ({recorded[:60]}): "
            "they take none of its workers' decisions",
            "restart `baton up` (it records the key its workers use)",
        )
    return ok(SIGNING, f"{path} (its public key is in stack.json: the stack's clients take "
                       "only what it signed)")  # fmt: skip


def _unsigned(settings: Settings) -> Check:
    if settings.decision_keys:
        return ok(SIGNING, f"clients check with {settings.decision_keys[:60]}")
    return Check(
        SIGNING,
        Status.SKIP,
        "the workers sign no decision: a writer of gov.decisions can answer SDK clients",
        "set BATON_DECISION_SIGNING_KEY on the workers and BATON_DECISION_KEYS on the clients",
    )
