"""What a ``baton up`` start keeps of the earlier one, said at every start (the broker forgets)."""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baton.cli.signer import (
    shown,
)
from baton.cli.stack_file import (
    StackRecord,
)
from baton.schemas.errors import BatonError, ConfigError
from baton.schemas.files import write_data_file
from baton.schemas.key_files import key_source
from baton.schemas.settings import Settings

if TYPE_CHECKING:
    from baton.schemas.policy import Policy

__all__ = [
    "POLICY_COPY",
    "earlier_policy",
    "keep_policy_copy",
    "name_a_lost_policy",
    "prune_broker_logs",
    "say_what_a_restart_keeps",
    "workers_chain_key_id",
]

#: in DATA_DIR: the --policy file's text as a start read it, what its workers load, named
#: ``policy-<sha256 of the text, 16 hex>.yaml``: a start refused after writing its copy (a
#: guard, a busy port) left the earlier start's copy in place, and the guard of the next start
#: read the earlier start's policy from it (session 38, H4: one name, overwritten, read the
#: refused start's policy instead). ``policy.yaml``: the one name of the starts before that.
POLICY_COPY = "policy.yaml"
_COPY_RE = re.compile(r"^policy(-[0-9a-f]{16})?\.yaml$")


def _rebuild_runs_from_audit(
    settings: Settings, catalog: Any, data_dir: Path, say: Callable[[str], None]
) -> int | None:
    """HOOK (issue 13, replay): give the fresh broker the run states of an earlier start,
    rebuilt from the audit in ``data_dir``/chdb, before the worker decides anything.

    Called with the broker up and the topics created, before any child starts (so chDB is
    not held yet). Returns how many runs were restored, or None when nothing is rebuilt
    (then `baton up` warns that the runs start from zero)."""
    from baton.cli.restore_runs import restore_runs

    return restore_runs(settings, data_dir, say)


def workers_chain_key_id(
    settings: Settings,
    data_dir: Path,
    earlier: StackRecord | None,
    forgotten: bool,
    say: Callable[[str], None],
) -> str:
    """The id of the key the stack's workers will link decisions with (``""``: none):
    BATON_AUDIT_CHAIN_KEY, else DATA_DIR/worker/chain.key, made while the audit holds no
    decision (control_seal). Refused (ConfigError, exit 2) when the audit was chained with
    another key, or with one this start lacks: a start without chain.key linked new decisions
    unkeyed, and a forged row appended at a run's end passed `baton audit verify` again
    (h44 F1); one with the variable set or unset since made chains of two keys (F2)."""
    from baton.cli.up_audit import has_tables
    from baton.cli.up_children import WORKER_DATA_DIR
    from baton.processors.control_seal import chain_key, chain_key_id, ensure_chain_key

    audit = data_dir / "chdb"
    fresh = not has_tables(audit)
    key = chain_key(settings) or ensure_chain_key(data_dir / WORKER_DATA_DIR, fresh)
    made = chain_key_id(key)
    was = None if earlier is None or forgotten else earlier.chain_key_id
    if was and made != was:
        now = (
            f"this start links with another (id {made}, from "
            + (
                key_source(settings.audit_chain_key_file)
                if settings.audit_chain_key
                else "worker/chain.key"
            )
            + ")"
            if made
            else "this start has none (DATA_DIR/worker/chain.key is gone, BATON_AUDIT_CHAIN_KEY "
            "unset)"
        )
        raise ConfigError(
            f"the audit in {audit} is chained with the key stack.json names (id {was}), and "
            f"{now}: put DATA_DIR/worker/chain.key back from a backup of the data dir, or set or "
            "unset BATON_AUDIT_CHAIN_KEY as at the last start; or start with a new --data-dir "
            "(with another key every run would be restored stopped, and without one a forged row "
            "appended at a run's end would pass `baton audit verify`)"
        )
    if not key:
        say(
            f"WARNING: the audit in {audit} was begun without a chain key (before Baton made "
            "one): a forged row appended at a run's end passes `baton audit verify`; a new "
            "data dir gets one"
        )
    return made


def say_what_a_restart_keeps(
    data_dir: Path,
    earlier: StackRecord | None,
    no_audit: bool,
    settings: Settings,
    catalog: Any,
    say: Callable[[str], None],
) -> None:
    """The embedded broker forgets everything when it stops: say so at every start, what the
    audit gives back, and loudly when it gives nothing back."""
    from baton.cli.up_audit import has_tables
    from baton.cli.up_children import WORKER_DATA_DIR
    from baton.processors.control_seal import ensure_seal_key
    from baton.processors.held_kills import clear_held_kills

    audit = data_dir / "chdb"
    clear_held_kills(data_dir / WORKER_DATA_DIR)  # the restore below writes what it holds
    ensure_seal_key(data_dir / WORKER_DATA_DIR)  # the workers seal commands' records with it
    if no_audit:
        say(
            "the embedded Kafka broker keeps everything in memory and --no-audit keeps no "
            "audit: when baton up stops, every run's state (spend, handoff counts, owners, "
            "stops), pending approvals, kill switches and policy updates are gone"
        )
    else:
        say(
            "the embedded Kafka broker keeps everything in memory: when baton up stops, its "
            "topics are gone; a start with this data dir rebuilds the runs' state from the "
            f"audit in {audit} and issues its kill switches (and signed releases and policy "
            "updates) again; requests the worker had not decided when it stopped are gone"
        )
    if not has_tables(audit):  # none, or only the id a start before wrote
        return
    restored = None if no_audit else _rebuild_runs_from_audit(settings, catalog, data_dir, say)
    if not no_audit:
        _name_held_kill_switches(data_dir, say)
    if restored is not None:
        say(f"restored {restored} runs' state from the audit in {audit}")
        return
    since = f" (last start {earlier.started_at:%Y-%m-%d %H:%M:%S} UTC)" if earlier else ""
    say(
        f"WARNING: {audit} holds the audit of an earlier start{since}, but its runs' state "
        "is NOT restored: every run starts again from zero (a stopped or over-budget run can "
        "be allowed again, kill switches are lifted). Use a Kafka cluster to keep governance "
        "across restarts"
    )


def name_a_lost_policy(
    audit: Path,
    version: str,
    say: Callable[[str], None],
    operators: bool = True,
    allow_unsigned: bool = False,
    earlier: Policy | None = None,
    start: Policy | None = None,
    keys: Sequence[bytes] = (),
) -> str | None:
    """A policy published before this restart is gone with the old broker's control topic:
    when the workers used another policy than this start's, say so (its approver keys and
    operators may be gone with it), never fall back in silence. A signed publication the
    restore re-issues wins over this start's policy once applied: said too (an operator who
    started with --policy STRICT saw only STRICT's version named while a looser published
    policy decided, session 29); returns that publication's version (None: none).
    ``earlier``: the policy the earlier start began with (:func:`earlier_policy`), from which
    the operators this start must not drop are folded (``restart_notice.
    operators_not_given_back``), whatever the audit's rows say; ``start``: this start's
    policy, from which its workers fold the re-issued updates; ``keys``: the workers' seal
    keys (the policy in force is read from the records they sealed)."""
    from baton.cli.restart_notice import policy_in_force
    from baton.cli.up_audit import has_tables

    if not has_tables(audit):
        return None
    if earlier is not None and not operators and not allow_unsigned:
        _refuse_dropped_operators(audit, earlier, version, start, keys)
    try:
        before = policy_in_force(audit, keys)
    except BatonError as exc:
        say(f"WARNING: could not read the policy in force of the audit in {audit}: {exc}")
        return None
    if before is None or before.version == version:
        return None
    if before.operators and not before.reissued and not operators and not allow_unsigned:
        # a restart without the --policy file that listed them switched signing off: an
        # unsigned release lifted a re-issued signed kill (H3, session 34)
        names = ", ".join(shown(n) for n in before.operators[:8])
        raise ConfigError(
            f"the policy in force before this restart (version {shown(before.version)}) lists "
            f"operators ({names}) and this start's policy {version} lists none: from now on "
            "kill switches, releases and policy updates would be taken unsigned from any writer "
            "of gov.control. Start with --policy FILE naming them (or publish such a policy), "
            "or pass --allow-unsigned if that is what you mean"
        )
    published = f", published by {shown(before.published_by)}" if before.published_by else ""
    if before.reissued:
        say(
            f"WARNING: the policy published before this restart (version "
            f"{shown(before.version)}{published}, last recorded {before.at[:19]} UTC) is "
            f"re-issued and, once a worker applies it, decides instead of this start's policy "
            f"{version} (--policy / BATON_POLICY, else the seed policy): a published policy wins "
            "over the file. To enforce this start's policy, publish it: `baton policy publish "
            "FILE`"
        )
        return str(before.version)
    say(
        f"WARNING: the policy in force before this restart (version {shown(before.version)}"
        f"{published}, last recorded {before.at[:19]} UTC) is NOT in force now: this start uses "
        f"policy {version} (--policy / BATON_POLICY, else the seed policy). Re-publish it "
        "with `baton policy publish FILE`, or start with --policy FILE"
    )
    return None


def _refuse_dropped_operators(
    audit: Path,
    earlier: Policy,
    version: str,
    start: Policy | None = None,
    keys: Sequence[bytes] = (),
) -> None:
    """ConfigError when the policy the earlier start's workers came to hold lists operators
    that this restart does not give back (its own policy lists none); folded through the
    commands the workers sealed under ``keys`` when they sealed any."""
    from datetime import UTC, datetime

    from baton.cli.restart_notice import (
        operators_not_given_back,
        recorded_commands,
        unsigned_operators_source,
    )

    try:
        commands = recorded_commands(audit, keys)
    except BatonError:  # unread, no update re-issues them: the earlier start's own decide
        commands = []
    now = datetime.now(UTC)
    dropped = operators_not_given_back(commands, earlier, now, start)
    if dropped:
        names = ", ".join(shown(n) for n in dropped[:8])
        source = unsigned_operators_source(commands, earlier, now)
        raise ConfigError(
            f"the earlier start's policy (version {shown(earlier.version)}), or the policy its "
            f"workers came to hold, lists operators ({names}){source} and this start's policy "
            f"{version} "
            "lists none: from now on kill switches, releases and policy updates would be taken "
            "unsigned from any writer of gov.control. Start with --policy FILE naming them (or "
            "publish such a policy), or pass --allow-unsigned if that is what you mean"
        )


def earlier_policy(
    data_dir: Path, earlier: StackRecord | None, allow_unsigned: bool = False
) -> Policy | None:
    """The policy the earlier start of ``data_dir`` began with, read before this start
    writes its own copy: the copy of its --policy file its record names (a file only `baton
    up` writes, read in ``data_dir`` by name: a data dir moved since still has it), the seed
    policy when it had none; None for a first start or a start older than the copies.

    A copy the record names that no longer reads (deleted, edited) is refused unless
    ``allow_unsigned``: it is what tells whether this restart drops the operators its workers
    held, and the audit's own record of them is a forger's to write (session 38, A2)."""
    from baton.schemas.errors import PolicyError
    from baton.schemas.policy import load_policy

    if earlier is None:
        return None
    path = earlier.policy
    if path is not None and path.name.startswith("policy-") and _COPY_RE.match(path.name):
        path = data_dir / path.name  # a copy named by its hash
    elif path is not None and path != data_dir / POLICY_COPY:
        # a start older than the copies: its file (a user's policy.yaml too) may have
        # changed since; the one name of the copies before session 39 is read where it was
        return None
    try:
        return load_policy(path)
    except (PolicyError, OSError) as exc:
        if allow_unsigned:
            return None
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)[:300]
        raise ConfigError(
            f"the earlier start's copy of its policy {path} does not read ({why}): it tells "
            "whether this restart drops the operators the workers held; put it back, or "
            "confirm with --allow-unsigned"
        ) from None


def _name_held_kill_switches(data_dir: Path, say: Callable[[str], None]) -> None:
    """The kill switches in force before this restart that it cannot issue again (their
    command is not in the audit, or was altered there) are held by its workers from their
    start (processors.held_kills): name each, and how to keep or lift it."""
    from baton.cli.restart_notice import scope_names
    from baton.cli.up_children import WORKER_DATA_DIR
    from baton.processors.held_kills import read_held_kills

    held = read_held_kills(data_dir / WORKER_DATA_DIR)
    names = scope_names([("run", r) for r in sorted(held.runs)])
    names += scope_names([("tenant", t) for t in sorted(held.tenants)])
    names += ["global"] * held.everything
    if names:
        listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        say(
            f"WARNING: {len(names)} kill switch(es) in force before this restart cannot be "
            f"issued again (their command is not in the audit, was altered there, or is refused "
            f"by this start's policy, e.g. unsigned under operators): {listed}; "
            "the workers hold them from their start: re-issue each with `baton kill --run RUN "
            "| --tenant T | --global` (a later restart then issues it too), or lift it with "
            "`baton kill ... --release` (signed by an operator when the policy lists operators)"
        )


def keep_policy_copy(
    data_dir: Path,
    text: str,
    source: Path,
    say: Callable[[str], None],
    earlier: StackRecord | None = None,
) -> Path:
    """Write the --policy file's ``text`` (read and checked once) into ``data_dir`` for the
    stack's workers, its record and the commands that read it: the file edited while the
    stack runs changed what a restarted worker loaded and what `policy publish` compared
    with, not what the workers held (H2, session 34). Edits take effect at the next start.

    Named by the text's hash (``POLICY_COPY``); other such copies are removed, except the one
    the ``earlier`` start's record names (this start may yet be refused)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = data_dir / f"policy-{digest}.yaml"
    write_data_file(path, text, 0o600, "the stack's copy of the policy")
    kept = {path.name} | ({earlier.policy.name} if earlier and earlier.policy else set())
    for old in data_dir.glob("policy-*.yaml"):  # never policy.yaml: a user's file may be it
        if _COPY_RE.match(old.name) and old.name not in kept and old != source.resolve():
            with contextlib.suppress(OSError):  # a copy left is no reason not to start
                old.unlink()
    say(
        f"policy {source} copied to {path}: the stack's workers use that copy until it stops "
        "(an edit of the file takes effect at the next start, or publish it)"
    )
    return path


#: broker logs of earlier starts kept in DATA_DIR/logs (each start's broker has its own port,
#: so its own tansu-PORT.log: a week of restarts left one a restart)
_BROKER_LOGS_KEPT = 2


def prune_broker_logs(logs: Path, say: Callable[[str], None]) -> None:
    """Remove all but the newest earlier starts' broker logs (no stack runs on this data dir:
    checked before)."""
    try:
        old = sorted(logs.glob("tansu-*.log"), key=lambda p: p.stat().st_mtime, reverse=True)
        for path in old[_BROKER_LOGS_KEPT:]:
            path.unlink()
    except OSError as exc:  # a log left is no reason not to start
        say(f"could not remove old broker logs in {logs}: {exc}")
