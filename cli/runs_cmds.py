"""``baton runs refused`` and ``baton runs rebuild``: the runs the workers' restore refuses on
a Kafka changelog, and their states rebuilt from the audit (cli/runs_refused.py says why)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from baton.cli.audit_options import dsn_option
from baton.cli.help_listing import SentenceGroup
from baton.cli.options import setting_options
from baton.cli.stack_record import data_dir_option, stack_settings
from baton.cli.wording import counted
from baton.schemas.errors import BatonError, ConfigError
from baton.schemas.settings import Settings
from baton.sinks.render import shown_cut

__all__ = ["register"]

_SETTINGS = (
    "bootstrap",
    "topic_prefix",
    "partitions",
    "app_id",
    "run_retention_s",
    "tombstone_retention_s",
)


class NotAllRebuilt(BatonError):
    """A run asked for was not rebuilt (not refused, no decision in the audit, the audit
    behind): exit 1, the verdict is no."""


@click.group("runs", cls=SentenceGroup)
def runs_group() -> None:
    """Runs the workers' restore refuses, and their states rebuilt from the audit."""


@runs_group.command("refused")
@setting_options(*_SETTINGS)
@data_dir_option
def refused_cmd(data_dir: Path | None, **opts: Any) -> None:
    """List the runs a worker's restore of the changelog (<app id>-runs-changelog) refuses:
    none of their records carries the workers' state MAC (a record forged onto a compacted
    changelog, or every record written by a worker without the key, or under another key).
    Their events are `state_unreadable` dead letters until `baton runs rebuild` writes their
    state again. Also the runs it holds an older record of than their newest (OLDER: a worker
    without the key decided them after one with it, as in a rolling upgrade). Reads every
    partition from its start, with the workers' seal key (BATON_AUDIT_CHAIN_KEY or
    BATON_AUDIT_CHAIN_KEY_FILE). Exit 0 when none is refused or older, 1 when some are, 2
    without a key, 4 when Kafka or a partition cannot be read."""
    settings = stack_settings(opts, data_dir)
    found = _read(settings, _keys(settings, data_dir))
    for key, (partition, why) in sorted(found.refused.items()):
        alien = "" if _run_id(key) is not None else " (a key no event carries: not UTF-8)"
        click.echo(f"REFUSED {_shown(_run(key))} (partition {partition}){alien}: {why}")
    for key, newer in sorted(found.passed_over.items()):
        click.echo(
            f"OLDER {_shown(_run(key))} (partition {_partition(key, found)}): the restore holds a "
            f"record of the workers' but not the {counted(newer, 'newer record')} of it after it "
            "(a worker without the key decided the run after one with it, as in a rolling "
            "upgrade, or records forged or written again): its state may be older than its "
            "decisions"
        )
    summary = (
        f"runs refused: {counted(len(found.refused), 'run')} of "
        f"{counted(len(found.refused) + len(found.held), 'run')} on {found.topic} "
        f"({counted(found.partitions, 'partition')} read to their end)"
    )
    if found.passed_over:
        summary += f"; {counted(len(found.passed_over), 'run')} held older than its records"
    if found.notes.count:
        summary += (
            f"; {counted(found.notes.count, 'record')} not taken (first: {found.notes.first[0]})"
        )
    click.echo(summary)
    if len(found.refused) > 1 and not found.held:
        click.echo(
            "WARNING: every run on the changelog is refused: expected after an upgrade (records "
            "of workers without the key) or a rotation; otherwise the key given is not the "
            "workers' (BATON_AUDIT_CHAIN_KEY, BATON_AUDIT_CHAIN_KEY_FILE)"
        )
    if any(_run_id(key) is not None for key in (*found.refused, *found.passed_over)):
        click.echo(
            "rebuild them from the audit: stop the workers, `baton runs rebuild --refused "
            "--workers-stopped`, start the workers"
        )
    if found.refused or found.passed_over:
        raise SystemExit(1)


@runs_group.command("rebuild")
@click.argument("run_ids", nargs=-1, metavar="[RUN_ID]...")
@click.option(
    "--refused",
    "every",
    is_flag=True,
    help="every run the restore refuses or holds older than its records (`runs refused`)",
)
@click.option("--dry-run", is_flag=True, help="say what would be written; write nothing")
@click.option(
    "--history-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="the key the runs' decisions were linked with, when the workers linked them under "
    "another one before (a rotated BATON_AUDIT_CHAIN_KEY): a file holding it alone",
)
@click.option(
    "--unkeyed-history",
    is_flag=True,
    help="the runs' decisions were linked without a key (decided before the workers had "
    "BATON_AUDIT_CHAIN_KEY: an upgraded deployment); a row forged into the audit then passes",
)
@click.option(
    "--workers-stopped",
    is_flag=True,
    help="say that every worker of the group is stopped (not paused: a SIGSTOPped worker or a "
    "paused container that resumes decides past the rebuilt state); needed to write",
)
@click.option(
    "--stop-unverified",
    is_flag=True,
    help="write a run whose decisions do not replay as recorded STOPPED (audit_unverified); "
    "without it such a run is left refused, so the right key can still rebuild it",
)
@setting_options(*_SETTINGS)
@dsn_option
def rebuild_cmd(
    run_ids: tuple[str, ...],
    every: bool,
    dry_run: bool,
    history_key_file: Path | None,
    unkeyed_history: bool,
    workers_stopped: bool,
    stop_unverified: bool,
    data_dir: Path | None,
    **opts: Any,
) -> None:
    """Rebuild the state of refused runs (each RUN_ID, or --refused: all) from the audit, as
    `baton up`'s restart rebuilds every run: their recorded decisions replayed under their
    recorded policies. Stop every worker first and say so with --workers-stopped (it refuses
    while one seems to run: a worker holding a run in memory would decide past the rebuilt
    state); each state is written to its changelog
    partition with the workers' state MAC, and the workers take them when they start. A run
    the restore does not refuse is never written; nor is one whose decisions on the decisions
    topic are not all in the audit (the sink behind, rows lost), nor one whose decisions do not
    replay exactly as recorded (under the chain key: the workers', --history-key-file's, or
    none with --unkeyed-history) unless --stop-unverified writes it STOPPED (audit_unverified).
    Exit 0 when every run asked for was rebuilt, 1 when one was not (each is named with why)
    or a worker runs, 2 without a key, 4 Kafka, 5 ClickHouse."""
    from baton.cli.audit_options import audit_client
    from baton.cli.chain_keys import audit_worker_dir
    from baton.cli.restore_write import write_changelog
    from baton.cli.runs_evidence import decisions_on_topic, missing_from_audit, workers_running
    from baton.cli.runs_refused import Rebuild, partitions_of, rebuild_refused
    from baton.processors.control_seal import workers_chain_key
    from baton.schemas.record_mac import MacKeys
    from baton.sinks.clickhouse import audit_errors, parse_dsn
    from baton.streams.topics import TopicCatalog

    if bool(run_ids) == every:
        raise click.UsageError("give RUN_IDs or --refused, not both nor neither")
    if history_key_file is not None and unkeyed_history:
        raise click.UsageError("give --history-key-file or --unkeyed-history, not both")
    settings = stack_settings(opts, data_dir, audit=True)
    keys = _keys(settings, data_dir)
    found = _read(settings, keys)
    # (keys as run ids only when they are UTF-8: a forged key b"\xff" shown as "\\xff" named
    # the run "\\xff", which a worker may hold, refused)
    # (a run held older than its newest records is rebuilt too: the audit has the decisions
    # a worker without the key made after the record held, h49c F1)
    rebuilt_ones = (*found.refused, *found.passed_over)
    refused = {run for key in rebuilt_ones if (run := _run_id(key)) is not None}
    held = {run for key in found.held if (run := _run_id(key)) is not None}
    asked = sorted(refused) if every else list(dict.fromkeys(run_ids))
    left = {
        run: "not refused: the workers' restore holds its state (nothing to lift); a rebuilt "
        "state could be older than theirs, so none is written"
        if run in held
        else "not refused: no record of it on the changelog (no worker holds it: its next "
        "event starts it as a new run)"
        for run in asked
        if run not in refused
    }
    todo = [run for run in asked if run in refused]
    if every and not todo:
        aliens = len(rebuilt_ones) - len(refused)
        also = (
            f" ({counted(aliens, 'refused key')} no event carries: no run's, nothing to rebuild)"
            if aliens
            else ""
        )
        click.echo(f"runs rebuild: no run is refused on {found.topic}{also}: nothing to do")
        return
    if todo and not dry_run and not workers_stopped:
        raise click.UsageError(
            "stop every worker of the group first (not pause: one that resumes decides a run "
            "past its rebuilt state), then say so with --workers-stopped; start them after "
            "(--dry-run needs neither)"
        )
    if todo and not dry_run and (running := workers_running(settings)) is not None:
        raise NotAllRebuilt(
            f"{running}: stop every worker first (one holding a run in memory would decide it "
            "past the rebuilt state, and the next restore would not take its records after "
            "it); rebuild, then start them: each restores the rebuilt runs. --dry-run says "
            "what would be written meanwhile"
        )
    label = parse_dsn(settings.clickhouse_dsn).label
    worker_dir = audit_worker_dir(settings.clickhouse_dsn, data_dir) or settings.worker_data_dir
    chain_key = workers_chain_key(settings, worker_dir)
    if unkeyed_history:
        chain_key = b""
    elif history_key_file is not None:
        chain_key = _history_key(history_key_file)
    rebuild = Rebuild()
    if todo:
        # what the decisions topic holds of them (the workers' records: their audit MAC, or
        # any record of a history decided without a key) must all be in the audit
        accept = _accept_all if unkeyed_history else MacKeys([*keys, chain_key]).holds
        on_topic = decisions_on_topic(settings, todo, accept, click.echo)
        topic = TopicCatalog.from_settings(settings).decisions
        with audit_client(settings) as client, audit_errors(label, "rebuilding refused runs"):
            for run, lacking in missing_from_audit(client, on_topic).items():
                left[run] = (
                    f"the audit lacks {counted(lacking, 'decision')} of it that {topic} holds "
                    "(the sink behind, or rows lost: a restored backup, a replica behind, "
                    "--dsn another copy; with --unkeyed-history also a decision forged onto the "
                    "topic that a keyed sink refused): a state rebuilt from it would miss them; "
                    "left refused"
                )
            complete = [run for run in todo if run not in left]
            rebuild = rebuild_refused(settings, client, complete, chain_key, click.echo)
    left.update(rebuild.left)
    if rebuild.unverified and not stop_unverified:
        for run in rebuild.unverified:
            left[run] = (
                "its decisions do not replay as recorded under the chain key given (rows "
                "forged or altered in the audit: `baton audit verify --run RUN`; or linked "
                "under another key: --history-key-file, or before the workers had one: "
                "--unkeyed-history); left refused. --stop-unverified writes it STOPPED "
                "(audit_unverified)"
            )
        unverified = set(rebuild.unverified)
        rebuild.states = [s for s in rebuild.states if s.run_id not in unverified]
    if rebuild.states and not dry_run:
        write_changelog(settings, rebuild.states, keys[0])
    verb = "would write" if dry_run else "wrote"
    for state in rebuild.states:
        click.echo(
            f"{'WOULD REBUILD' if dry_run else 'REBUILT'} {_shown(state.run_id)} from "
            f"{counted(rebuild.decisions.get(state.run_id, 0), 'decision')}: {_described(state)}"
            + (
                " (due to be forgotten: the workers' sweep forgets it once restored)"
                if state.run_id in rebuild.forgotten
                else ""
            )
        )
    for run, why in left.items():
        click.echo(f"NOT REBUILT {_shown(run)}: {why}")
    summary = (
        f"runs rebuild: {verb} {counted(len(rebuild.states), 'run state')} to {found.topic} "
        f"from the audit at {label}"
    )
    if rebuild.states:
        parts = partitions_of((s.run_id for s in rebuild.states), found.partitions)
        where = f"{'partition' if len(parts) == 1 else 'partitions'} {', '.join(map(str, parts))}"
        summary += (
            f"; start the workers{' after writing' if dry_run else ''}: each takes them when it "
            f"restores their partitions ({where})"
        )
    click.echo(summary)
    if left:
        raise NotAllRebuilt(f"{counted(len(left), 'run')} not rebuilt (above)")


def _keys(settings: Settings, data_dir: Path | None) -> list[bytes]:
    """The workers' seal keys: BATON_AUDIT_CHAIN_KEY[_FILE], else the `baton up` stack's
    seal.key; ConfigError without one (no record is refused, none can be marked)."""
    from baton.cli.up_children import WORKER_DATA_DIR
    from baton.processors.control_seal import seal_keys

    worker_dir = data_dir / WORKER_DATA_DIR if data_dir is not None else settings.worker_data_dir
    keys = seal_keys(settings, worker_dir)
    if not keys:
        raise ConfigError(
            "no seal key: give the workers' BATON_AUDIT_CHAIN_KEY (or BATON_AUDIT_CHAIN_KEY_FILE), "
            f"or --data-dir of a `baton up` stack (its worker/seal.key; none in {worker_dir}). "
            "Workers without one restore every changelog record unchecked: none is refused"
        )
    return keys


def _accept_all(value: bytes) -> bool:
    """Every record is the workers' (a history decided without a key has no MAC to check)."""
    return True


def _history_key(path: Path) -> bytes:
    """The key in ``path`` (--history-key-file), read as a chain key file is."""
    from baton.schemas.key_files import KEY_FILE_VARIABLE, read_chain_key_file

    try:
        return read_chain_key_file(path).encode()
    except ConfigError as exc:
        raise ConfigError(str(exc).replace(KEY_FILE_VARIABLE, "--history-key-file", 1)) from None


def _read(settings: Settings, keys: list[bytes]) -> Any:
    from baton.cli.runs_refused import read_refused
    from baton.streams.net import check_reachable

    check_reachable(settings.bootstrap, settings.connect_timeout_s)
    return read_refused(settings, keys)


def _run(key: bytes) -> str:
    """A changelog record's key as text to show (bytes no event carries: escaped)."""
    return key.decode("utf-8", "backslashreplace")


def _partition(key: bytes, found: Any) -> int:
    from baton.streams.partitioner import partition_for

    return partition_for(key, found.partitions)


def _run_id(key: bytes) -> str | None:
    """A changelog record's key as the run id an event carries (None: not UTF-8, no run's)."""
    try:
        return key.decode()
    except UnicodeDecodeError:
        return None


def _shown(run: str) -> str:
    """A run id for a line: escaped, and cut (a key may be 1,024 bytes)."""
    return shown_cut(run, 200)


def _described(state: Any) -> str:
    """A rebuilt state in a line: its counters, spend and whether it is stopped."""
    if state.stopped:
        stop = f"STOPPED ({getattr(state.stopped, 'value', state.stopped)})"
    else:
        stop = "finished" if state.finished else "open"
    if state.evicted_at is not None:
        stop += ", idle (held as a tombstone)"
    return (
        f"{counted(state.handoff_count, 'handoff')}, ${state.spent_usd:.2f} spent, "
        f"{counted(state.tool_calls, 'tool call')}, {stop}"
    )


def register(cli: click.Group) -> None:
    """Add ``baton runs`` to the ``baton`` group."""
    cli.add_command(runs_group)
