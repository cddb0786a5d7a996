"""Replays of genuine signed stops (h44b F1, F2), without a broker: the stops an alerter
announced kept in a state file across restarts (a hostile file a warning and a fresh start),
stops decided past --max-age folded into one late summary, storm summaries naming their runs."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from baton.schemas.decision import Decision, Outcome, Phase
from baton.schemas.decision_signing import DecisionSigner, decision_keys
from baton.schemas.signing import new_private_key, public_key_text
from baton.sinks.alert_fold import NAME_SHOWN
from baton.sinks.alert_offsets import CommitPoints
from baton.sinks.alert_records import SkippedRecords
from baton.sinks.alert_seen import _TEMP, STATE_FILE, AnnouncedStops, _temp_name
from baton.sinks.alert_text import TEXT_MAX
from baton.sinks.alerts import StopAlerter, _announce, stop_line
from tests.unit.test_audit_alerts import _Record

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
WALL = NOW.timestamp()


def _stop(i: int, age_s: float = 0.0, run: str | None = None) -> Decision:
    decided = NOW - timedelta(seconds=age_s)
    return Decision(
        decision_id=f"d{i}",
        request_id=f"r{i}",
        run_id=run or f"run_{i}",
        tenant="acme",
        phase=Phase.PRE_HANDOFF,
        outcome=Outcome.STOP,
        reason="ownership_conflict",
        from_agent="planner",
        to_agent="researcher",
        task_id="refund_check",
        event_time=decided,
        decided_at=decided,
    )


def _alerter(state: Path | None = None, **kwargs: float) -> StopAlerter:
    seen = AnnouncedStops(limit=int(kwargs.pop("limit", 1000)), state_dir=state)
    seen.open(WALL)
    threshold = int(kwargs.pop("storm_threshold", 0))
    return StopAlerter(storm_threshold=threshold, late_after_s=3600.0, seen=seen, **kwargs)


def _restart(alerter: StopAlerter, state: Path) -> StopAlerter:
    """Everything the alerter took is out (its mark due), then it stops; a new one starts."""
    alerter.seen.settle(alerter.seen.added, WALL)
    alerter.seen.close(WALL)
    return _alerter(state)


# --- announced stops kept across restarts -------------------------------------------------


def test_a_restarted_alerter_does_not_announce_a_stop_it_announced_before(tmp_path: Path) -> None:
    """The attack: a copy of a genuine stop written to gov.stops after the alerter's restart
    was paged anew. Over the same state dir it is a duplicate; a new stop is still paged."""
    first = _alerter(tmp_path)
    assert [m.text for m in first.offer(_stop(1, 60), 0.0, WALL)] == [stop_line(_stop(1))]
    again = _restart(first, tmp_path)
    assert again.offer(_stop(1, 60), 1.0, WALL) == []
    assert again.duplicates == 1
    assert len(again.offer(_stop(2, 60), 2.0, WALL)) == 1
    path = tmp_path / STATE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temp file left


def test_temp_files_a_killed_rewrite_left_are_removed_at_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A kill -9 during a rewrite left its temp file (up to ~5 MB) and nothing removed it: one
    more each kill. The next start removes such names only; a link of that name is removed,
    its target left alone; anything else in the directory stays."""
    caplog.set_level(logging.INFO)
    state = tmp_path / "alerts"
    state.mkdir(mode=0o700)
    torn = [state / f".{STATE_FILE}.{i:016x}.tmp" for i in (1, 2)]
    for path in torn:
        path.write_bytes(b"x" * 1000)
    outside = tmp_path / "precious"
    outside.write_text("keep")
    link = state / f".{STATE_FILE}.{3:016x}.tmp"
    link.symlink_to(outside)
    other = state / f".{STATE_FILE}.notours.tmp"
    other.write_text("keep")
    assert _TEMP.fullmatch(_temp_name())  # the names a rewrite makes are the ones removed
    stuck = state / f".{STATE_FILE}.{4:016x}.tmp"
    stuck.mkdir()  # named like one, not removable: a warning, not counted, the start goes on

    alerter = _alerter(state)
    assert not any(p.exists() or p.is_symlink() for p in [*torn, link])
    assert outside.read_text() == "keep" and other.read_text() == "keep"
    assert "removed 3 temp file(s) a killed rewrite left" in caplog.text
    assert f"cannot remove 1 temp file(s) in {state}: {stuck.name}" in caplog.text
    assert stuck.is_dir()
    alerter.seen.close(WALL)


def test_only_stops_whose_alerts_are_out_are_remembered(tmp_path: Path) -> None:
    """A stop printed but not yet posted (its mark not due) is not written: a crash re-reads
    it and announces it again, as before (at least once), rather than drop the post."""
    first = _alerter(tmp_path)
    first.offer(_stop(1), 0.0, WALL)
    first.seen.settle(first.seen.added, WALL)  # its alert is out
    first.offer(_stop(2), 1.0, WALL)  # not out at exit
    first.seen.close(WALL)
    again = _alerter(tmp_path)
    assert again.offer(_stop(1), 2.0, WALL) == []
    assert len(again.offer(_stop(2), 3.0, WALL)) == 1


def test_appended_entries_survive_a_crash_without_a_clean_exit(tmp_path: Path) -> None:
    first = _alerter(tmp_path)
    first.offer(_stop(1), 0.0, WALL)
    first.seen.settle(first.seen.added, WALL)
    os.close(first.seen._dir_fd)  # killed: no rewrite at exit (the lock goes with the process)
    again = _alerter(tmp_path)
    assert again.offer(_stop(1), 1.0, WALL) == [] and again.seen.loaded == 1


def test_the_state_file_keeps_the_newest_limit_and_drops_what_is_past_the_window(
    tmp_path: Path,
) -> None:
    seen = AnnouncedStops(limit=3, keep_s=100.0, state_dir=tmp_path)
    seen.open(WALL)
    for i in range(10):  # appended, rewritten past twice the limit
        seen.add(bytes([i]) * 16, WALL - (200 if i == 8 else 0))
        seen.settle(seen.added, WALL)
    assert (tmp_path / STATE_FILE).stat().st_size <= 40 + 6 * 24
    seen.close(WALL)
    again = AnnouncedStops(limit=3, keep_s=100.0, state_dir=tmp_path)
    again.open(WALL)
    assert [bytes([i]) * 16 in again for i in range(10)] == [False] * 7 + [True, False, True]


def test_a_second_alerter_on_the_same_state_dir_keeps_memory_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two alerters appending and rewriting one file would lose each other's stops."""
    first = _alerter(tmp_path)
    second = _alerter(tmp_path)
    assert second.seen.path is None
    assert "is another alerter's (locked)" in caplog.text
    first.seen.close(WALL)


def _plant(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "symlink":
        target = path.with_name("elsewhere")
        target.write_bytes(b"x")
        path.symlink_to(target)
    elif kind == "folder":
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "10 MB":
        path.write_bytes(b"\0" * 10_000_000)
    elif kind == "writable by others":
        path.write_bytes(b"")
        path.chmod(0o666)
    elif kind == "another user's":
        path.write_bytes(b"")
        os.chown(path, 12345, 12345)


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("fifo", "is not a regular file"),
        ("symlink", "is a symbolic link"),
        ("folder", "is not a regular file"),
        ("garbage", "is not an alerter's state file"),
        ("10 MB", "is larger (10000000 bytes) than it is ever written"),
        ("writable by others", "may be written by others (mode 666)"),
        ("another user's", "belongs to another user (uid 12345)"),
    ],
)
def test_a_hostile_state_file_is_a_warning_and_a_fresh_start_never_a_hang(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, said: str
) -> None:
    if kind == "another user's" and os.geteuid() != 0:
        pytest.skip("chown needs root")
    path = tmp_path / STATE_FILE
    _plant(path, kind)
    done: list[StopAlerter] = []
    thread = threading.Thread(target=lambda: done.append(_alerter(tmp_path)), daemon=True)
    thread.start()
    thread.join(10)
    assert done, f"a {kind} state file hung the alerter's start"
    alerter = done[0]
    assert f"state file {path} {said}" in caplog.text and "not read, starting afresh" in caplog.text
    assert len(alerter.offer(_stop(1), 0.0, WALL)) == 1  # still announces
    alerter.seen.settle(alerter.seen.added, WALL)
    alerter.seen.close(WALL)
    if kind != "folder":  # replaced by a file of its own
        info = os.lstat(path)
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == os.geteuid()
        assert _alerter(tmp_path).offer(_stop(1), 1.0, WALL) == []
    else:
        assert "cannot write" in caplog.text


def test_a_torn_last_entry_is_dropped_and_the_others_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = _alerter(tmp_path)
    first.offer(_stop(1), 0.0, WALL)
    first.seen.settle(first.seen.added, WALL)
    first.seen.close(WALL)
    with open(tmp_path / STATE_FILE, "ab") as state:
        state.write(b"\x01" * 10)  # a crash mid-append
    again = _alerter(tmp_path)
    assert "10 bytes of a torn last entry" in caplog.text
    assert again.offer(_stop(1), 0.0, WALL) == []


def test_a_state_dir_that_cannot_be_made_is_memory_only_and_announces(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("x")
    alerter = _alerter(tmp_path / "file" / "alerts")
    assert "cannot be used" in caplog.text and "memory only" in caplog.text
    assert len(alerter.offer(_stop(1), 0.0, WALL)) == 1


def test_a_state_dir_others_may_write_is_used_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    alerter = _alerter(shared)
    assert f"state dir {shared} is not only yours" in caplog.text and "mode 777" in caplog.text
    assert alerter.seen.path == shared / STATE_FILE
    alerter.seen.close(WALL)


def test_a_commit_mark_says_which_stops_are_out() -> None:
    points = CommitPoints()
    points.read("gov.stops", 0, 4)
    points.mark(queued=1, announced=3)
    points.read("gov.stops", 0, 5)
    points.mark(queued=2, announced=4)
    assert points.due(finished=1) and points.settled == 3
    assert points.due(finished=2) and points.settled == 4


# --- late stops: folded, never paged alone, never dropped ---------------------------------


def test_an_unseen_stop_past_max_age_is_folded_into_one_late_summary() -> None:
    """A replay of old stops the alerter forgot (a fresh state, another group) after its
    first assignment: one line a minute names them, none is paged alone."""
    alerter = _alerter(late_window_s=60.0)
    out = [m for i in range(30) for m in alerter.offer(_stop(i, 7200 + i), i * 0.1, WALL)]
    assert out == [] and alerter.holding == 30 and alerter.late == 30
    assert alerter.tick(59.0) == []
    [summary] = alerter.tick(60.0)
    assert summary.stops == 30 and not summary.storm
    assert summary.text.startswith(
        "⏰ Late stops: 30 stops decided 2 h ago (past --max-age 1 h), not announced before"
    )
    assert "replays" in summary.text and "was down" in summary.text
    assert "run run_0 (ownership_conflict, decided 2 h ago, decision d0)" in summary.text
    assert "run_4 " in summary.text and "run_5 " not in summary.text
    assert summary.text.endswith("; and 25 more")
    assert alerter.holding == 0
    # not among the announced (old stops by the 100,000 would evict the recent ones a replay
    # pages), but a copy of one summed up is a duplicate: one old signed stop written again
    # each minute made a late summary each minute (h45c F5)
    for minute in range(1, 6):
        assert alerter.offer(_stop(3, 7203), 60.0 * minute + 1, WALL) == []
        assert alerter.tick(60.0 * minute + 61) == []
    assert alerter.late == 30 and alerter.duplicates == 5 and alerter.holding == 0
    assert len(alerter.seen) == 0
    # another old stop still makes the next summary
    assert alerter.offer(_stop(99, 7300), 400.0, WALL) == [] and alerter.late == 31


def test_old_copies_read_first_cannot_keep_the_missed_stops_out_of_the_late_summary() -> None:
    """F7 (session 45): the summary named the first five late stops read, so anyone who can
    write gov.stops could copy old signed stops in ahead of the ones a down alerter missed
    (the newest of the late, just past --max-age) and leave them unnamed. It names the five
    youngest, youngest first, whatever order they came in."""
    alerter = _alerter(late_window_s=60.0)
    copies = [_stop(i, 5 * 3600 + i) for i in range(100)]  # old stops written again
    missed = [_stop(900 + i, 3700 - i * 10, run=f"missed_{i}") for i in range(3)]
    for n, stop in enumerate([*copies, *missed, _stop(999, 4 * 3600)]):
        assert alerter.offer(stop, n * 0.01, WALL) == []
    [summary] = alerter.tick(60.0)
    assert summary.stops == 104
    named = summary.text.split("newest: ", 1)[1]
    assert named.startswith("run missed_2 (ownership_conflict, decided 1 h ago, decision d902)")
    assert named.index("missed_2") < named.index("missed_1") < named.index("missed_0")
    assert "run_999 " in named and "run_0 " in named and "run_1 " not in named
    assert summary.text.endswith("; and 99 more")


def test_late_stops_between_a_storm_s_ticks_leave_a_moment_with_nothing_held() -> None:
    """h45c F1: a commit mark is taken only while nothing is held; a storm held stops until
    its tick and late stops until theirs (60 s), and late copies between the ticks of a storm
    that went on left no such moment: nothing committed, nothing written to the state file,
    for as long as it lasted. The late stops now go out with each storm summary."""
    alerter = _alerter(late_window_s=60.0, storm_threshold=20)
    t, free = 0.0, 0
    for i in range(400):  # 40 s: a storm of fresh stops, an old stop every fourth record
        t += 0.1
        for message in alerter.tick(t):
            assert message.stops > 0
        free += alerter.holding == 0
        if i % 4 == 3:
            alerter.offer(_stop(10_000 + i, 7200), t, WALL)
        else:
            alerter.offer(_stop(i), t, WALL)
    assert alerter.late > 50 and free >= 6, (alerter.late, free)  # one a storm window at least


def test_an_alerter_down_two_hours_still_tells_on_call_what_it_missed() -> None:
    """The legit late case: stops decided while the alerter was down. The old ones are
    summed up (at shutdown too), the recent ones announced one by one."""
    alerter = _alerter()
    announced = alerter.offer(_stop(1, 2 * 3600), 0.0, WALL)
    announced += alerter.offer(_stop(2, 600), 0.1, WALL)
    assert [m.text for m in announced] == [stop_line(_stop(2))]
    [late] = alerter.flush(1.0)
    assert late.stops == 1 and "run run_1 " in late.text


def test_a_far_past_stop_is_late_and_a_far_future_one_is_announced_once() -> None:
    alerter = _alerter()
    ancient = Decision(**{**_stop(1).to_dict(), "decided_at": datetime(1, 1, 1, tzinfo=UTC)})
    future = Decision(**{**_stop(2).to_dict(), "decided_at": datetime(9999, 1, 1, tzinfo=UTC)})
    assert alerter.offer(ancient, 0.0, WALL) == []
    assert [m.text for m in alerter.offer(future, 0.1, WALL)] == [stop_line(future)]
    assert alerter.offer(future, 0.2, WALL) == []
    [late] = alerter.flush(1.0)
    assert "decided 739,954 d ago" in late.text and len(late.text) <= TEXT_MAX


def test_a_late_signed_stop_is_counted_on_the_skipped_metric_as_late(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Through the record path, signed by the workers' key: folded and counted (kind late),
    logged once; the first assignment's history is still skipped too_old."""
    key = new_private_key()
    keys = decision_keys(public_key_text(key))
    alerter, skipped = StopAlerter(storm_threshold=0, late_after_s=3600.0), SkippedRecords()
    stop = Decision(**{**_stop(1).to_dict(), "decided_at": datetime.now(UTC) - timedelta(hours=3)})

    signed = DecisionSigner(key).signed(stop.to_json())
    assert _announce(alerter, skipped, _Record(signed, 1), 0.0, keys) == []
    assert skipped.counts == {"late": 1} and alerter.holding == 1
    assert "skipped (late): decided 3 h ago, past --max-age 3600 s" in caplog.text
    assert _announce(alerter, skipped, _Record(signed, 2), 3600.0, keys) == []  # a first start
    assert skipped.counts == {"late": 1, "too_old": 1}


# --- storm summaries name their runs (h44b F2) --------------------------------------------


def test_a_storm_summary_names_the_distinct_runs_it_folded() -> None:
    """A writer of gov.handoff.requests gets signed stops for runs it names and folds a
    real stop into its storm: the summary named only the first stop, now the real run too."""
    alerter = StopAlerter(storm_threshold=2, storm_window_s=5.0)
    for i in range(5):
        alerter.offer(_stop(i, run="decoy"), i * 0.01)
    alerter.offer(_stop(99, run="run_742"), 0.1)
    [summary] = alerter.flush(5.0)
    assert "across 2 Multi-Agent runs (decoy, run_742): " in summary.text


def test_a_storm_names_ten_runs_each_cut_and_counts_the_rest() -> None:
    alerter = StopAlerter(storm_threshold=1, storm_window_s=5.0)
    for i in range(25):
        alerter.offer(_stop(i, run=f"{i:02d}" + "x" * 60_000), i * 0.01)
    [summary] = alerter.flush(5.0)
    assert "and 15 more): " in summary.text and len(summary.text) <= TEXT_MAX
    names = summary.text.split("runs (")[1].split(" and 15 more")[0].split(", ")
    assert len(names) == 10 and all(len(name) == NAME_SHOWN for name in names)
    assert names[9].startswith("09x")


# --- where the state dir comes from -------------------------------------------------------


def test_baton_alerts_takes_its_state_dir_from_the_option_or_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    import baton.sinks.alerts
    from baton.cli.main import _register, cli
    from baton.sinks.alerts import AlertStats

    given: list[Path | None] = []

    def run_alerts(*_args: object, state_dir: Path | None = None, **_kwargs: object) -> AlertStats:
        given.append(state_dir)
        return AlertStats()

    monkeypatch.setattr(baton.sinks.alerts, "run_alerts", run_alerts)
    _register()
    runner = CliRunner()
    args = ["alerts", "--bootstrap", "127.0.0.1:1", "--data-dir", str(tmp_path / "none")]
    assert runner.invoke(cli, [*args, "--state-dir", str(tmp_path / "a")]).exit_code == 0
    env = {"BATON_ALERTS_STATE_DIR": str(tmp_path / "b")}
    assert runner.invoke(cli, args, env=env, auto_envvar_prefix="BATON").exit_code == 0
    assert given == [tmp_path / "a", tmp_path / "b"]


def test_baton_up_gives_its_alerter_a_state_dir_in_its_data_dir(tmp_path: Path) -> None:
    from baton.cli.up_children import audit_children

    children = dict(audit_children(None, "baton", tmp_path / "alerts"))
    assert children["alerts"][-2:] == ("--state-dir", str(tmp_path / "alerts"))


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)


# --- the consume loop, on a scripted consumer ---------------------------------------------


def test_a_stream_of_late_stops_never_stalls_commits_nor_the_state_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attacker writing a copy of an old stop to gov.stops every moment kept a late summary
    holding at every batch's end: no offset committed, no announced stop written to the state
    file for as long as it went on (a restart then paged them all again). A mark is taken at
    each record while nothing is held, so each summary lets the commits through."""
    import confluent_kafka

    from baton.schemas.settings import Settings
    from baton.sinks.alerts import run_alerts

    now = datetime.now(UTC)
    real = _stop(0)
    real = Decision(**{**real.to_dict(), "decided_at": now, "event_time": now})
    batches = [[_stop(i, 0)] for i in range(1, 41)]  # a late copy every batch
    batches[3] = [Decision(**{**_stop(4).to_dict(), "decided_at": now - timedelta(hours=3)}), real]
    for batch in batches:
        batch[0] = Decision(**{**batch[0].to_dict(), "decided_at": now - timedelta(hours=3)})
    done = threading.Event()
    commits: list[tuple[int, bool]] = []

    class Consumer:
        def __init__(self, _conf: object) -> None:
            self.offset = 100

        def subscribe(self, topics: list[str], on_assign: object, on_revoke: object) -> None:
            pass  # (never a first assignment: every old stop is late, not too_old)

        def consume(self, num_messages: int, timeout: float) -> list[_Record]:
            time.sleep(0.02)
            if not batches:
                done.set()
                return []
            out = []
            for decision in batches.pop(0):
                out.append(_Record(decision.to_json(), self.offset))
                self.offset += 1
            return out

        def commit(self, offsets: list[confluent_kafka.TopicPartition], asynchronous: bool) -> None:
            commits.append((offsets[0].offset, asynchronous))

        def close(self) -> None:
            pass

    monkeypatch.setattr(confluent_kafka, "Consumer", Consumer)
    lines: list[str] = []
    stats = run_alerts(Settings(), done, topic="gov.stops", emit=lines.append, storm_threshold=0,
                       late_window_s=0.1, state_dir=tmp_path)  # fmt: skip
    assert lines[0] == stop_line(real)
    assert stats.skipped["late"] == 40 and sum("Late stops" in line for line in lines) > 2
    # the real stop (offset 104) committed while the stream went on, not only at the exit
    assert any(offset > 104 and asynchronous for offset, asynchronous in commits), commits
    assert commits[-1][0] == 141
    again = AnnouncedStops(state_dir=tmp_path)
    again.open(datetime.now(UTC).timestamp())
    assert again.loaded == 1


def test_a_write_torn_by_a_full_disk_leaves_no_misaligned_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """h45c F4: a disk full tore an entry (a short write) and the rewrite failed too; once space
    came back the appends went on after the torn bytes, misaligning every later entry: after a
    crash none of them was remembered. The torn append is cut back to whole entries."""
    import hashlib

    import baton.sinks.alert_seen as alert_seen

    def key(i: int) -> bytes:
        return hashlib.blake2b(str(i).encode(), digest_size=16).digest()

    seen = AnnouncedStops(state_dir=tmp_path)
    seen.open(WALL)
    for i in range(10):
        seen.add(key(i), WALL)
    seen.settle(seen.added, WALL)
    whole = alert_seen._write_all

    def full_disk(fd: int, data: bytes) -> None:
        os.write(fd, data[:7])  # a torn entry, then no space
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(alert_seen, "_write_all", full_disk)
    monkeypatch.setattr(alert_seen, "_replace", lambda dir_fd, data: full_disk(0, b""))
    for i in range(10, 13):
        seen.add(key(i), WALL)
    seen.settle(seen.added, WALL)
    monkeypatch.setattr(alert_seen, "_write_all", whole)
    for i in range(13, 40):  # space back; then a crash: no clean exit, no rewrite
        seen.add(key(i), WALL)
        seen.settle(seen.added, WALL)
    size = (tmp_path / STATE_FILE).stat().st_size
    os.close(seen._dir_fd)  # type: ignore[arg-type]
    seen._dir_fd = None  # the crash: its lock gone with it
    restarted = AnnouncedStops(state_dir=tmp_path)
    restarted.open(WALL)
    assert all(key(i) in restarted for i in range(13, 40)), size
    assert all(key(i) in restarted for i in range(10))


def test_a_start_with_the_clock_days_ahead_keeps_what_was_announced(tmp_path: Path) -> None:
    """h45c F6: the keep window counted back from the wall clock, so one start (or exit) with
    the clock two days ahead pruned and rewrote every entry, for good and unsaid. It counts
    back from the newest stop's signed time when that is earlier."""
    day = 86_400.0
    first = AnnouncedStops(keep_s=day, state_dir=tmp_path)
    first.open(WALL)
    for i in range(50):
        first.add(i.to_bytes(16, "big"), WALL - 60)
    first.settle(first.added, WALL)
    first.close(WALL)
    ahead = AnnouncedStops(keep_s=day, state_dir=tmp_path)
    ahead.open(WALL + 2 * day)
    assert ahead.loaded == 50
    ahead.close(WALL + 2 * day)
    right = AnnouncedStops(keep_s=day, state_dir=tmp_path)
    right.open(WALL)
    assert right.loaded == 50
    # what is older than the window before the newest stop still goes
    right.add(b"o" * 16, WALL - 3 * day)
    right.settle(right.added, WALL)
    right.close(WALL)
    last = AnnouncedStops(keep_s=day, state_dir=tmp_path)
    last.open(WALL)
    assert last.loaded == 50 and b"o" * 16 not in last


def test_a_state_dir_link_retargeted_after_the_start_is_not_followed(tmp_path: Path) -> None:
    """h45c F3: the state dir's path was resolved again at every write: another local user
    who retargeted a link to it had the alerter's file written in a folder of theirs. Every
    write goes to the directory opened at the start."""
    own, other = tmp_path / "own", tmp_path / "other"
    own.mkdir(mode=0o700)
    other.mkdir(mode=0o700)
    link = tmp_path / "alerts"
    link.symlink_to(own)
    seen = AnnouncedStops(state_dir=link)
    seen.open(WALL)
    link.unlink()
    link.symlink_to(other)  # retargeted
    seen.add(b"k" * 16, WALL)
    seen.settle(seen.added, WALL)
    seen.close(WALL)
    assert list(other.iterdir()) == []
    assert [p.name for p in own.iterdir()] == [STATE_FILE]
    seen.add(b"j" * 16, WALL)  # closed: nothing written anywhere, the cwd neither
    seen.settle(seen.added, WALL)
    assert not Path(STATE_FILE).exists()
