"""The audit a ``baton up`` restores from is the one its earlier start wrote, or it does not start.

The embedded broker forgets everything when it stops; the audit (``DATA_DIR/chdb``) is where
a restart takes every run's state, the kill switches and the published (signed) policy back
from. A start that found no audit there used to begin as a new stack: killed runs and tenants
allowed again, the seed policy (no operators: unsigned commands accepted) in force, and
``baton doctor`` content (H2, session 33). So ``baton up`` names its audit: a random id in
``chdb/baton-audit.id``, kept in ``stack.json`` too. A start whose earlier record names an
audit that is not there (moved, deleted, emptied, the id kept without the tables) or is
another one (a copy of another stack's), or whose data dir shows a sink ran there (its log)
while ``chdb`` holds no audit tables (a record truncated or deleted too), refuses, exit 2,
until the audit is put back or ``--forget-audit`` says to go on without it. A copy of the
same audit restored from a backup carries its id and is taken (the restore says what it
rebuilt) when it holds every decision the audit held at its stack's last clean stop: an older
backup, or the audit emptied in place, is refused too (cli/audit_mark.py).
"""

from __future__ import annotations

import contextlib
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
    "has_tables",
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


def _unread(path: Path) -> str:
    """Why :func:`audit_id` read no id at ``path``: a file of another user read "is not an id"
    (session 34's remaining); now what reading it says."""
    try:
        read_small_file(path, 256, mine=True)
    except (FileNotFoundError, NotADirectoryError):
        return "is missing"
    except FileProblem as exc:
        return str(exc)
    return "is not an id"


def has_tables(chdb: Path) -> bool:
    """``chdb`` holds Baton's audit: its database and its decisions table (the sink creates
    them at its first start). The database's file alone, its tables deleted, passed for the
    audit and the restart restored nothing (H2, session 34)."""
    from baton.sinks.schema import DATABASE

    return (chdb / "metadata" / DATABASE / "decisions.sql").is_file()


def _sink_log(data_dir: Path) -> Path:
    return data_dir / "logs" / "sink.log"


def _lost(data_dir: Path, earlier: StackRecord | None) -> str | None:
    """What is wrong with ``data_dir``'s audit against ``earlier``'s record (None: no record,
    or one that could not be read) and the data dir's own traces; None: nothing.

    The id file alone is not the audit (its tables deleted, the id kept, passed: H1, session
    34), and a record that cannot be read is no reason to forget the audit: a sink's log in
    the data dir says one ran there and made the audit's tables."""
    chdb = data_dir / "chdb"
    found = audit_id(chdb)
    tables = has_tables(chdb)
    sink_ran = _sink_log(data_dir).exists()
    expected = earlier.audit_id if earlier is not None else None
    if expected is not None:
        if not chdb.is_dir():
            return f"{chdb} is missing"
        if found is None:
            kind = _unread(chdb / AUDIT_ID_FILE)
            return f"{chdb} is not that audit (its {AUDIT_ID_FILE} {kind}: emptied, or another)"
        if found != expected:
            return f"{chdb} holds another audit (id {found}, the record names {expected})"
        if not earlier.audit_made and earlier.audit_mark is None and not _marked(found):
            # a start stopped before its audit was made: none to lose (it left a sink's log
            # and no tables, and every restart was refused); a mark kept outside the data dir
            # says a stop counted its decisions: the record's `audit_made: false` edited
            return None
        if not tables:
            return f"{chdb} holds the audit's id but not its tables (they were deleted)"
        return None
    if sink_ran and not tables:
        return (
            f"{chdb} holds no audit tables, though {_sink_log(data_dir)} shows an audit sink "
            "ran in this data dir (the tables deleted, the folder emptied or moved)"
        )
    return None


def _marked(found: str) -> bool:
    """A clean stop marked the audit of this id (its mark outside the data dir)."""
    from baton.cli.audit_mark import kept_mark

    return kept_mark(found) is not None


def _shrunk(data_dir: Path, earlier: StackRecord | None, wait_s: float = 30.0) -> str | None:
    """What the audit lacks of the marks of its last clean stop (in ``earlier``'s record, and
    kept outside the data dir under its id): an older copy of it, a copy that went on without
    its commands, its rows deleted in place (cli/audit_mark.py); None: nothing, or no mark.
    Opens the audit: only where no process holds it (a start, a stopped stack)."""
    from baton.cli.audit_mark import AuditCount, AuditMark, count_audit, kept_mark, mark_path
    from baton.cli.audit_mark import missing as lacks

    chdb = data_dir / "chdb"
    found = audit_id(chdb)
    if found is None or not has_tables(chdb):
        return None  # _lost judges these
    marks: list[tuple[AuditMark, str]] = []
    if earlier is not None and earlier.audit_id == found and earlier.audit_mark is not None:
        marks.append((earlier.audit_mark, str(record_path(data_dir))))
    outside = kept_mark(found)
    if outside is not None:
        marks.append((outside, str(mark_path(found))))
    if not marks:
        return None
    ids = {ident for mark, _ in marks for ident in mark.commands}
    counted = count_audit(chdb, ids, wait_s) or AuditCount({}, 20_000, {}, frozenset())
    for mark, where in marks:
        problem = lacks(mark, counted)
        if problem is not None:
            return f"{chdb} is not the audit its stack left (its mark: {where}): {problem}"
    return None


def _record_problem(data_dir: Path, earlier: StackRecord | None) -> str:
    """How the data dir's record reads, for a refusal's message."""
    from baton.cli.stack_file import read_record

    if earlier is not None:
        return f"{record_path(data_dir)} names its audit (last start: {earlier.describe()})"
    try:
        record = read_record(data_dir)
    except ConfigError as exc:
        return f"its record cannot be read ({str(exc)[:300]})"
    if record is None:
        return f"{record_path(data_dir)} is gone"
    return f"{record_path(data_dir)} records the audit's id (last start: {record.describe()})"


def refuse_a_lost_audit(
    data_dir: Path, earlier: StackRecord | None, no_audit: bool, forget: bool, say: Callable
) -> bool:
    """Before anything starts: refuse (``ConfigError``, exit 2) a start whose data dir had an
    audit that is not there, unless ``forget`` (--forget-audit), and check that the id can be
    written. With --no-audit nothing is restored anyway (said at every such start). True: an
    older copy of the audit was forgotten (it gets a new id: the marks of the newer one no
    longer apply)."""
    if earlier is not None and earlier.state != "stopped" and not no_audit:
        say(  # kill -9, a crash, the machine stopped: no ordered stop (H2, session 35)
            f"WARNING: the earlier stack ({earlier.describe()}) did not stop cleanly: the "
            "decisions of its last seconds may not be in the audit, and the runs they were "
            "about are restored without them"
        )
    lost = None if no_audit else _lost(data_dir, earlier)
    shrunk = None if no_audit or lost is not None else _shrunk(data_dir, earlier)
    problem = lost or shrunk
    if problem is None:
        if forget:
            say("--forget-audit: the audit of the earlier start is there; nothing forgotten")
    elif forget:
        say(
            f"WARNING: --forget-audit: {problem}; this start goes on without the earlier "
            "audit: its runs' state, kill switches and published policy are gone unless the "
            f"audit in {data_dir / 'chdb'} still holds them (what it restores is said below), "
            "and it is named with a new id"
        )
    else:
        where = _record_problem(data_dir, earlier)
        raise ConfigError(
            f"the audit of the earlier stack in {data_dir} is not there: {problem}; "
            f"{where}. The audit holds every run's state, the kill switches "
            "and the published (signed) policy: started without it, killed runs and tenants "
            "would be allowed again and the seed policy, with no operators, would take unsigned "
            "commands. Put the audit back (from a backup, or where it was moved to), or start "
            "with --forget-audit to begin without it"
        )
    if not no_audit:
        _refuse_an_id_path_not_a_file(data_dir / "chdb" / AUDIT_ID_FILE)
    return shrunk is not None


def _refuse_an_id_path_not_a_file(path: Path) -> None:
    """A FIFO at the id's path hung the start in open() with the broker up (H1, session 34);
    a directory failed only after the broker started: refused before anything starts."""
    import stat

    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot read the audit's id {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(
            f"the audit's id {path} is not a regular file; remove it (baton up writes a new "
            "one) and start again"
        )


def keep_audit_id(
    data_dir: Path, earlier: StackRecord | None, no_audit: bool, renew: bool = False
) -> str | None:
    """The id this start records: its audit's, written into ``DATA_DIR/chdb`` when the audit
    has none yet (a first start, a --forget-audit, an audit of an earlier Baton), or a new one
    when ``renew`` (--forget-audit took an older copy of it: the marks of the newer one must
    not refuse every later start). With --no-audit the earlier record's is kept for the next
    start to check."""
    chdb = data_dir / "chdb"
    found = None if renew else audit_id(chdb)
    if no_audit:
        return (earlier.audit_id if earlier is not None else None) or audit_id(chdb)
    expected = earlier.audit_id if earlier is not None else None
    if found is not None and (found == expected or expected is None):
        return found  # its own audit, or one this start takes (a first start, --forget-audit)
    if found is not None and has_tables(chdb):
        return found  # --forget-audit took another stack's audit: it keeps its id
    new = secrets.token_hex(_ID_LENGTH // 2)
    path = chdb / AUDIT_ID_FILE
    try:
        chdb.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600
        )
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
    if problem is None and not record.live(found.data_dir):
        from baton.schemas.errors import BatonError

        # no process should hold the audit: against its marks (cli/audit_mark.py); one that
        # does (a sink of its own) is not waited for, the count left to the next start
        with contextlib.suppress(BatonError):
            problem = _shrunk(found.data_dir, record, wait_s=0.0)
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
