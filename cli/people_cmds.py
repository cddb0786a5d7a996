"""``baton approvals``, ``baton approve`` and ``baton deny``: a human approver's commands.

``approvals`` lists what waits for an answer (from the audit, like ``baton sql``);
``approve``/``deny`` look the approval up there (its run, request and the request's digest),
sign the answer with the approver's key, publish it on gov.approvals (keyed by the run,
murmur2, as the SDK does), and wait for the worker's ``approval``-phase record of it: printed,
exit 0 when the answer counted, 6 when the worker refused it (the reason is printed).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from baton.cli.audit_options import audit_client, dsn_option, query_settings
from baton.cli.options import FiniteFloatRange, setting_options
from baton.cli.signer import CommandRefused, describe, load_key, shown, signer_options
from baton.cli.stack_record import stack_settings
from baton.processors.approvals import request_problem
from baton.schemas.decision import Decision, Outcome, Reason
from baton.schemas.errors import BadArgument, BatonError
from baton.schemas.events import MAX_TEXT
from baton.schemas.names import fold
from baton.sinks.render import shown_cut

__all__ = ["register"]

_LIST_COLUMNS = (
    "approval_id",
    "run_id",
    "request_id",
    "action",
    "tools",
    "asked_by",
    "to_agent",
    "age",
    "expires_in",
    "request_digest",
)


#: records that do not hold together named one by one on stderr (the rest are counted)
_NAMED_SKIPPED = 20


def _duration(seconds: float) -> str:
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@click.command("approvals")
@click.option("--run", "run_id", default="", help="only this run's approvals")
@click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="table for people (age and expiry as 3m04s), CSV or JSON lines (in seconds)",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=1000,
    show_default=True,
    help="list at most this many (the oldest)",
)
@dsn_option
def approvals_cmd(
    run_id: str, fmt: str, limit: int, clickhouse_dsn: str | None, data_dir: Path | None
) -> None:
    """List pending approvals, oldest first: run, request, action, the tools it declares (a
    grant covers each one the gate matches), asked by, age, expires in,
    and the request digest an approver's signature covers. Answer one with `baton approve
    APPROVAL_ID --as NAME --key FILE` or `baton deny …`."""
    from baton.cli.approvals_audit import pending_approvals
    from baton.sinks.clickhouse import audit_errors, parse_dsn
    from baton.sinks.render import render

    settings = query_settings(clickhouse_dsn, data_dir)
    with (
        audit_client(settings) as client,
        audit_errors(parse_dsn(settings.clickhouse_dsn).label, "listing pending approvals"),
    ):
        listing = pending_approvals(client, run_id, limit)
    pending = listing.pending
    # a row someone else wrote (`baton approve` refuses to sign it): named, never counted
    for p, problem in listing.skipped[:_NAMED_SKIPPED]:
        click.echo(
            shown(
                f"baton approvals: approval {p.asked.approval_id} (run {p.asked.run_id}) "
                f"not listed: its record does not hold together ({problem}); `baton "
                "audit verify` checks the run's rows"
            ),
            err=True,
        )
    if len(listing.skipped) > _NAMED_SKIPPED:
        click.echo(
            f"baton approvals: {len(listing.skipped) - _NAMED_SKIPPED} more records that do "
            "not hold together not listed",
            err=True,
        )
    if listing.stopped_at is not None:
        click.echo(
            f"baton approvals: stopped after reading {listing.stopped_at} records "
            f"({len(listing.skipped)} of them not holding together): approvals after them "
            "are not listed; narrow it with --run",
            err=True,
        )
    if not pending and fmt == "table":
        # the caller's run id, escaped and cut: printed raw, ESC or CR reached the terminal
        # and a 60 KB id made a 60 KB line
        click.echo("no pending approvals" + (f" for run {shown_cut(run_id, 80)}" if run_id else ""))
        return
    rows = []
    for p in pending:
        a = p.asked
        age, left = (
            (_duration(p.age_s), _duration(p.expires_in_s))
            if fmt == "table"
            else (round(p.age_s, 3), round(p.expires_in_s, 3))
        )
        # the tool beside the action: the gate matches either (listed by its action alone, a
        # request's gated tool went unseen by the approver who granted it, session 17)
        action = " ".join(filter(None, [a.action, f"tool {a.tool}" if a.tool else ""]))
        tools = _declared_tools(a)
        row = [
            a.approval_id,
            a.run_id,
            a.request_id,
            action,
            tools if fmt == "json" else ", ".join(tools),
            a.from_agent,
            a.to_agent,
            age,
            left,
            a.request_digest,
        ]
        # orchestrators name runs, requests, actions and agents: in a terminal, never raw
        rows.append([shown(v) if isinstance(v, str) else v for v in row] if fmt != "json" else row)
    click.echo(render(_LIST_COLUMNS, rows, fmt))


def _declared_tools(asked: Decision) -> list[str]:
    """The ``tools`` the request of ``asked`` declares (its recorded input: the listing shows
    only rows whose input holds together): a grant covers every one the gate matches, so an
    approver must see them (a request of ``action: docs.read`` declaring a refund in its
    ``tools`` was listed as docs.read, and its grant covered the refund, session 17)."""
    from baton.schemas.events import EventError, HandoffRequested, parse_event

    try:
        request = parse_event((asked.input or "").encode())
    except EventError:
        return []
    return list(request.tools or ()) if isinstance(request, HandoffRequested) else []


def _approval_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not (0 < len(value) <= 256 and value.isprintable()):
        raise click.BadParameter(
            f"expected an approval id as `baton approvals` lists it (apr_…), got "
            f"{value[:60]!r}{'…' if len(value) > 60 else ''}"
        )
    return value


def _comment(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and len(value) > MAX_TEXT:
        raise click.BadParameter(f"at most {MAX_TEXT} characters, got {len(value)}")
    return value


def _answer_options(fn: Any) -> Any:
    fn = click.option(
        "--timeout",
        type=FiniteFloatRange(min=0.1, max=3600),
        default=30.0,
        show_default=True,
        help="seconds to wait for the worker's decision",
    )(fn)
    fn = setting_options("bootstrap", "topic_prefix", "partitions", "decision_keys")(fn)
    return dsn_option(fn)


def _answer(
    verdict: str,
    approval_id: str,
    signer: str,
    key_file: Path,
    comment: str | None,
    timeout: float,
    clickhouse_dsn: str | None,
    data_dir: Path | None,
    opts: dict[str, Any],
) -> None:
    from baton.cli.approvals_audit import find_approval
    from baton.sinks.clickhouse import audit_errors, parse_dsn
    from baton.streams.net import check_reachable
    from baton.streams.sdk import ApproverClient

    key = load_key(key_file)  # before anything else: a bad key file is a usage error
    audit = query_settings(clickhouse_dsn, data_dir)
    label = parse_dsn(audit.clickhouse_dsn).label
    with audit_client(audit) as client, audit_errors(label, f"looking up approval {approval_id}"):
        asked, answered = find_approval(client, approval_id)
    if asked is None:
        raise BadArgument(
            f"approval {approval_id[:80]!r}: not in the audit at {label} (is the sink running "
            "and caught up? `baton approvals` lists the pending ones)"
        )
    where = shown(f"approval {approval_id} (run {asked.run_id}, request {asked.request_id})")
    if answered is not None:
        raise BadArgument(f"{where} was answered already: {describe(answered)}")
    if not asked.request_digest:
        raise BadArgument(
            f"{where} has no request_digest in the audit (asked before workers signed "
            "approvals?): a signature must name the request it answers"
        )
    problem = request_problem(asked)
    if problem is not None:
        raise BatonError(
            f"{where}: the audit's record does not hold together ({problem}): not signed; "
            "`baton audit verify` checks the run's rows"
        )
    expires = asked.approval_expires_at
    if expires is not None and expires <= datetime.now(UTC):
        raise BadArgument(
            f"{where} expired at {expires:%Y-%m-%d %H:%M:%S} UTC: the worker stops its "
            "handoff (approval_expired); the orchestrator may ask again"
        )
    settings = stack_settings(opts, data_dir)
    check_reachable(settings.bootstrap, settings.connect_timeout_s)
    with ApproverClient(
        settings=settings, key=key, timeout=timeout, connect_timeout=settings.connect_timeout_s
    ) as approver:
        answer = approver.grant if verdict == "grant" else approver.deny
        decision = answer(asked, approver=signer, comment=comment, wait=True, timeout=timeout)
    assert decision is not None
    _report(where, verdict, asked, decision, signer)


def _report(where: str, verdict: str, asked: Decision, decision: Decision, signer: str) -> None:
    click.echo(f"{where}, request digest {asked.request_digest}:")
    click.echo(f"  {describe(decision)}")
    if decision.outcome != Outcome.RECORDED and decision.approver != fold(signer):
        # the approval was answered first by someone else: this answer did not count
        raise CommandRefused(f"{where} was resolved before this {verdict}: {describe(decision)}")
    other = (
        decision.reason != Reason.APPROVAL_DENIED
        if verdict == "deny"
        else decision.reason in (Reason.APPROVAL_DENIED, Reason.APPROVAL_EXPIRED)
    )
    if decision.outcome != Outcome.RECORDED and other:
        # the same approver's other answer (or the expiry) came first: exit 0 said this one
        # counted (session 39: a deny that lost the race to a grant)
        raise CommandRefused(f"{where} was resolved before this {verdict}: {describe(decision)}")
    if decision.outcome == Outcome.RECORDED:
        raise CommandRefused(
            f"the worker refused this {verdict} ({decision.reason}): {decision.detail}; "
            f"{where} is still pending"
        )


@click.command("approve")
@click.argument("approval_id", callback=_approval_id)
@signer_options("approver", key_required=True)
@click.option("--comment", callback=_comment, help="why (recorded with the answer)")
@_answer_options
def approve_cmd(
    approval_id: str,
    signer: str,
    key_file: Path,
    comment: str | None,
    timeout: float,
    clickhouse_dsn: str | None,
    data_dir: Path | None,
    **opts: Any,
) -> None:
    """Grant APPROVAL_ID as approver NAME, signed with the private key in FILE; print the
    worker's decision (exit 6 when it refused the grant, with why)."""
    _answer(
        "grant", approval_id, signer, key_file, comment, timeout, clickhouse_dsn, data_dir, opts
    )


@click.command("deny")
@click.argument("approval_id", callback=_approval_id)
@signer_options("approver", key_required=True)
@click.option("--comment", required=True, callback=_comment, help="why (recorded, required)")
@_answer_options
def deny_cmd(
    approval_id: str,
    signer: str,
    key_file: Path,
    comment: str,
    timeout: float,
    clickhouse_dsn: str | None,
    data_dir: Path | None,
    **opts: Any,
) -> None:
    """Deny APPROVAL_ID as approver NAME, signed with the private key in FILE (the handoff is
    stopped: approval_denied); print the worker's decision (exit 6 when it refused)."""
    _answer("deny", approval_id, signer, key_file, comment, timeout, clickhouse_dsn, data_dir, opts)


def register(cli: click.Group) -> None:
    for command in (approvals_cmd, approve_cmd, deny_cmd):
        cli.add_command(command)
