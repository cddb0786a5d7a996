"""The audit a ``baton up`` restores from is the one its earlier start wrote, or it does not start.

The embedded broker forgets everything when it stops; the audit (``DATA_DIR/chdb``) is where
a restart takes every run's state, the kill switches and the published (signed) policy back
from. A start that found no audit there used to begin as a new stack: killed runs and tenants
allowed again, the seed policy (no operators: unsigned commands accepted) in force, and
``baton doctor`` content (H2, session 33). So ``baton up`` names its audit: a random id in
``chdb/baton-audit.id``, kept in ``stack.json`` too. A start whose earlier record names an
audit that is not there (moved, deleted, emptied) or is another one (a copy of another
stack's) refuses, exit 2, until the audit is put back or ``--forget-audit`` says to begin
with an empty one. A copy of the same audit restored from a backup carries its id and is
taken (the restore says what it rebuilt).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from baton.cli.stack_file import StackRecord, record_path
from baton.schemas.errors import ConfigError
from baton.schemas.files import FileProblem, read_small_file

__all__ = [
    "AUDIT_ID_FILE",
    "audit_id",
    "audit_kept_checks",
    "keep_audit_id",
    "refuse_a_lost_audit",
]

#: in DATA_DIR/chdb: the audit's id, 32 hex digits (it moves with a backup of the folder)
AUDIT_ID_FILE = "baton-audit.id"
_ID_LENGTH = 32


def audit_id(chdb: Path) -> str | None:
    """The id of the audit in ``chdb``; None when it has none (no audit, or one no `baton up`
    named yet) or the file is not an id."""
    try:
        text = read_small_file(chdb / AUDIT_ID_FILE, 256, mine=True).decode("ascii").strip()
    except (FileNotFoundError, NotADirectoryError, FileProblem, UnicodeDecodeError):
        return None
    if len(text) != _ID_LENGTH or any(c not in "0123456789abcdef" for c in text):
        return None
    return text


def _expected(data_dir: Path, earlier: StackRecord) -> str | None:
    """The audit ``earlier``'s stack wrote in ``data_dir``: its id; ``"?"`` for a record of a
    Baton before the id whose sink ran there (its log is there); None: none to expect."""
    if earlier.audit_id is not None:
        return earlier.audit_id
    if earlier.clickhouse_dsn is not None and (data_dir / "logs" / "sink.log").exists():
        return "?"
    return None


def _lost(data_dir: Path, earlier: StackRecord | None) -> str | None:
    """What is wrong with ``data_dir``'s audit against ``earlier``'s record; None: nothing."""
    if earlier is None:
        return None
    expected = _expected(data_dir, earlier)
    if expected is None:
        return None
    chdb = data_dir / "chdb"
    found = audit_id(chdb)
    if expected == "?":  # a record from before the id: the audit's tables must be there
        if found is not None or (chdb / "metadata").is_dir():
            return None
        return f"{chdb} is missing or empty"
    if found == expected:
        return None
    if not chdb.is_dir():
        return f"{chdb} is missing"
    if found is None:
        return f"{chdb} is not that audit (it holds no {AUDIT_ID_FILE}: emptied, or another)"
    return f"{chdb} holds another audit (id {found}, the record names {expected})"


def refuse_a_lost_audit(
    data_dir: Path, earlier: StackRecord | None, no_audit: bool, forget: bool, say: Callable
) -> None:
    """Before anything starts: refuse (``ConfigError``, exit 2) a start whose data dir's
    earlier stack wrote an audit that is not there, unless ``forget`` (--forget-audit).
    With --no-audit nothing is restored anyway (said at every such start): no refusal."""
    problem = None if no_audit else _lost(data_dir, earlier)
    if problem is None:
        if forget:
            say("--forget-audit: the audit of the earlier start is there; nothing forgotten")
        return
    assert earlier is not None
    if forget:
        say(
            f"WARNING: --forget-audit: {problem}; this stack starts with the audit that is there "
            "(none: an empty one), and every run's state, kill switch and published policy of "
            "the earlier one is forgotten (its killed runs and tenants can be allowed again)"
        )
        return
    raise ConfigError(
        f"the audit of the earlier stack in {data_dir} is not there: {problem}, though "
        f"{record_path(data_dir)} records a stack that wrote one ({earlier.describe()}). The "
        "audit holds every run's state, the kill switches and the published (signed) policy: "
        "started without it, killed runs and tenants would be allowed again and the seed "
        "policy, with no operators, would take unsigned commands. Put the audit back (from a "
        "backup, or where it was moved to), or start with --forget-audit to begin with an "
        "empty one"
    )


def keep_audit_id(data_dir: Path, earlier: StackRecord | None, no_audit: bool) -> str | None:
    """The id this start records: its audit's, written into ``DATA_DIR/chdb`` when the audit
    has none yet (a first start, a --forget-audit, an audit of an earlier Baton). With
    --no-audit the earlier record's is kept for the next start to check."""
    chdb = data_dir / "chdb"
    found = audit_id(chdb)
    if no_audit:
        return (earlier.audit_id if earlier is not None else None) or found
    if found is not None:
        return found
    new = secrets.token_hex(_ID_LENGTH // 2)
    path = chdb / AUDIT_ID_FILE
    try:
        chdb.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(new + "\n")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the audit's id {path}: {exc.strerror or exc}; expected a writable "
            "data dir (--data-dir)"
        ) from None
    return new


def audit_kept_checks(data_dir: Path | None) -> list[Any]:
    """`baton doctor`'s line on the data dir's audit against its stack record: ✘ when a
    `baton up` there would refuse to start (the audit moved, emptied or replaced)."""
    from baton.cli.doctor_checks import fail, ok
    from baton.cli.stack_record import find_stack

    found = find_stack(data_dir)
    record = found.record
    if record is None or record.clickhouse_dsn is None:
        return []
    problem = _lost(found.data_dir, record)
    if problem is not None:
        return [
            fail(
                "audit of the stack",
                f"{problem}, though {record_path(found.data_dir)} records that its stack wrote "
                "it: the runs' state, kill switches and published policy are in it, and "
                "`baton up` refuses to start without it",
                "put the audit back (a backup, or where it was moved), or start "
                "`baton up --forget-audit` to begin with an empty one",
            )
        ]
    if record.audit_id is None:
        return []
    return [ok("audit of the stack", f"{found.data_dir / 'chdb'} is the one it wrote")]
