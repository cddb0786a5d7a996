"""``baton doctor``'s line on the key the workers seal operators' command records with.

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

__all__ = ["seal_key_check"]

NAME = "seal key"


def seal_key_check(settings: Settings, data_dir: Path | None) -> Check:
    """ok naming the key the workers seal with; FAIL when a `baton up` stack's key file is
    gone or does not read; skipped (never a failure) with neither key nor stack."""
    from baton.cli.stack_record import find_stack
    from baton.cli.up_children import WORKER_DATA_DIR
    from baton.processors.control_seal import SEAL_KEY_FILE, read_seal_key

    if settings.audit_chain_key:
        return ok(NAME, "BATON_AUDIT_CHAIN_KEY (the workers seal operators' command records)")
    found = find_stack(data_dir)
    path = found.data_dir / WORKER_DATA_DIR / SEAL_KEY_FILE
    if found.record is None:
        return Check(
            NAME,
            Status.SKIP,
            "none: the workers seal no operator's command record",
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
    return ok(NAME, f"{path} (back it up with the audit: a restart verifies with it)")
