"""Session 24's recheck of H1's three fixes (the reused report id in a run stopped at its
state budget, the budget refusal replayed on a tombstone, the dead-letter envelope of any
record): each test is an attack that broke something, fixed, or one that held and is
pinned. In CORE_TESTS (tests/integration/test_compiled_core.py): run against the compiled
build too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from baton.processors.batch import BatchProcessor, InputRecord
from baton.processors.engine import NO_KILLS, Origin, evict, refuse
from baton.processors.recorded import Recorded, policy_document
from baton.processors.replay import replay_runs, runs_of
from baton.processors.state import RunState
from baton.schemas.decision import Reason
from baton.schemas.events import parse_event
from baton.schemas.policy import Policy
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit

KEY = b"session24-recheck"
NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
POLICY = policy_with(max_handoffs=50)


def _event(n: int) -> bytes:
    return orjson.dumps({
        "type": "handoff_requested", "request_id": f"h{n}", "run_id": "rb", "task_id": f"t{n}",
        "from_agent": "planner", "to_agent": "researcher", "event_time": NOW.isoformat(),
    })  # fmt: skip


def _replayed(rows: list[Recorded]) -> bool:
    """``rows`` replay as recorded under the recorded policy: no run broken, partial or
    with a step not reproduced."""
    policies = {POLICY.version: Policy.model_validate_json(policy_document(POLICY))}
    report = replay_runs(runs_of(rows), POLICY, policies, KEY, retention_s=3600.0)
    return not report.broken and not report.partial and not any(r.unfaithful for r in report.runs)


def _forged_stop(row: Recorded, state: RunState, now: datetime) -> Recorded:
    """``row``'s input refused run_state_limit on ``state`` (what `baton replay` decides for
    such a row), written without a link: what anyone who can write audit rows but holds no
    chain key can make."""
    event = parse_event(row.input.encode(), b"rb")  # type: ignore[union-attr]
    origin = Origin(row.worker, row.partition, row.offset)
    _, (d,) = refuse(state, event, POLICY, now, Reason.RUN_STATE_LIMIT, "forged", NO_KILLS, origin)
    d.input = row.input
    return Recorded.of(d)._replace(chain_prev=None, chain_hash=None)


@pytest.mark.parametrize("idle_hours", [0, 2])
@pytest.mark.parametrize("on_tombstone", [False, True])
def test_a_forged_unlinked_budget_stop_of_a_held_run_is_not_reproduced(
    idle_hours: int, on_tombstone: bool
) -> None:
    """A run never near its state budget; its last decision replaced in the audit by a stop
    run_state_limit without a chain link (no chain key needed: a refusal's id is computed
    from the run id, request id and position), identified as the live run's or its
    tombstone's. `baton audit verify` takes an unlinked stop for a refusal of no state, and
    `baton replay` refuses a budget step as recorded (the budget is not in the audit), so
    both passed: the audit said the worker stopped what it allowed. The worker links every
    refusal of a run it holds (it stops and remembers it, since the chain began, before
    inputs were recorded): an unlinked one on a held run is not the worker's, not
    reproduced."""
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(POLICY, 1, states, worker="w", chain_key=KEY)
    recs = [InputRecord("r", 0, i, b"rb", _event(i)) for i in range(3)]
    published = [d for _, d in proc.process(recs, NOW).decisions]
    held = states[b"rb"]
    later = NOW + timedelta(hours=idle_hours)
    if idle_hours:
        states[b"rb"] = evict(held, later, 3600.0, 30 * 86400.0)  # type: ignore[assignment]
    published += [
        d for _, d in proc.process([InputRecord("r", 0, 3, b"rb", _event(3))], later).decisions
    ]
    rows = [Recorded.of(d) for d in published]
    assert rows[-1].chain_hash is not None and rows[-1].reason != "run_state_limit"
    assert _replayed(rows)  # the honest audit replays as recorded
    at = min(held.last_event_at + 3600.0, later.timestamp())
    state = held.tombstone(at) if on_tombstone else held
    forged = _forged_stop(rows[-1], state, later)
    assert forged.reason == "run_state_limit" and forged.outcome == "stop"
    assert not _replayed([*rows[:-1], forged])


def test_a_forged_worker_run_limit_stop_of_a_run_the_worker_held_is_not_reproduced() -> None:
    """The same forgery as a stop ``worker_run_limit`` (refused on no state, so its id is the
    input's position's: computable, and never linked) replacing the last allow of a run the
    worker held, not idle for its retention: `baton replay` refused it on no state whatever
    the run held, so it was reproduced. A worker refuses so only a run it does not hold (new,
    or whose tombstone it forgot: then the run was due, and replay's forgotten-run path
    decides it): on a run it held, not reproduced."""
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(POLICY, 1, states, worker="w", chain_key=KEY)
    recs = [InputRecord("r", 0, i, b"rb", _event(i)) for i in range(4)]
    rows = [Recorded.of(d) for _, d in proc.process(recs, NOW).decisions]
    assert _replayed(rows)
    last = rows[-1]
    event = parse_event(last.input.encode(), b"rb")  # type: ignore[union-attr]
    origin = Origin(last.worker, last.partition, last.offset)
    _, (d,) = refuse(None, event, POLICY, NOW, Reason.WORKER_RUN_LIMIT, "forged", NO_KILLS, origin)
    d.input = last.input
    forged = Recorded.of(d)
    assert forged.chain_hash is None and forged.outcome == "stop"
    assert not _replayed([*rows[:-1], forged])


# ------------------------------------------------------------------ the dead-letter envelope
class _NoRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@pytest.mark.parametrize("field", ["topic", "partition", "offset"])
@pytest.mark.parametrize("value", ["7\udc80", _NoRepr()])
def test_a_position_json_cannot_hold_is_a_dead_letter_not_a_crash(
    field: str, value: object
) -> None:
    """A record whose topic, partition or offset is a ``str`` with a lone surrogate, or an
    object whose repr raises (no Kafka client hands one over today; a future receive path
    could): ``_plain`` passed the str as it is and called repr unguarded, so the envelope's
    ``orjson.dumps`` (TypeError: surrogates not allowed) or the repr raised out of
    ``BatchProcessor.process``, the batch's end instead of the record's dead letter. Now the
    position is carried as JSON can hold it."""
    proc = BatchProcessor(policy_with(), 1, {}, worker="w")
    ok = InputRecord("r", 0, 2, b"run-2", orjson.dumps({
        "type": "handoff_requested", "request_id": "h1", "run_id": "run-2", "task_id": "t1",
        "from_agent": "planner", "to_agent": "researcher", "event_time": NOW.isoformat(),
    }))  # fmt: skip
    fields: dict[str, object] = {"topic": "r", "partition": 0, "offset": 1}
    fields[field] = value
    bad = InputRecord(fields["topic"], fields["partition"], fields["offset"], b"run-1", b"{")  # type: ignore[arg-type]
    out = proc.process([bad, ok], NOW)
    assert len(out.dead_letters) == 1 and len(out.decisions) == 1
    doc = orjson.loads(out.dead_letters[0].value)
    assert doc["error_kind"] and isinstance(doc[field], str)


def test_a_huge_error_text_is_capped_in_its_dead_letter() -> None:
    """An error of 3 MB (no caller makes one over ~2 KB today; an exception quoting its
    input could) made a 3 MB dead letter, past Kafka's limit even without the original
    (``dead_letter_without_original`` keeps the error): capped at MAX_ERROR_CHARS."""
    from baton.processors.batch_records import MAX_ERROR_CHARS, dead_letter_record

    rec = InputRecord("r", 0, 1, b"run-1", b"{")
    letter = dead_letter_record(rec, "engine_error", "x" * 3_000_000, "w", NOW)
    doc = orjson.loads(letter.value)
    assert doc["error"] == "x" * MAX_ERROR_CHARS + "…" and len(letter.value) < 20_000
    short = dead_letter_record(rec, "engine_error", "y" * MAX_ERROR_CHARS, "w", NOW)
    assert orjson.loads(short.value)["error"] == "y" * MAX_ERROR_CHARS


@pytest.mark.parametrize("reason", [Reason.RUN_STATE_LIMIT, Reason.WORKER_RUN_LIMIT])
def test_a_forged_refusal_on_no_state_passes_only_once_the_tombstone_could_be_forgotten(
    reason: Reason,
) -> None:
    """H3's leftover: a run's last allow replaced by an unlinked stop made on no state (the
    refusal a worker gives a run id it holds nothing of), the run idle 2 h before it: past
    the run retention (1 h), so replay's forgotten-run path decided the step on no state and
    reproduced it, exit 0, though the worker held the run's tombstone for 30 days
    (BATON_TOMBSTONE_RETENTION_S). Replay is told the workers' tombstone retention now: a
    run id is new again only that long after its tombstone was made. The same row after 31
    days idle is the honest case, reproduced."""
    states: dict[bytes, RunState] = {}
    proc = BatchProcessor(POLICY, 1, states, worker="w", chain_key=KEY)
    recs = [InputRecord("r", 0, i, b"rb", _event(i)) for i in range(3)]
    rows = [Recorded.of(d) for _, d in proc.process(recs, NOW).decisions]
    assert _replayed(rows)

    def forged_at(later: datetime) -> Recorded:
        event = parse_event(_event(3), b"rb")
        origin = Origin("w", 0, 3)
        _, (d,) = refuse(None, event, POLICY, later, reason, "forged", NO_KILLS, origin)
        d.input = _event(3).decode()
        return Recorded.of(d)

    assert not _replayed([*rows, forged_at(NOW + timedelta(hours=2))])
    assert _replayed([*rows, forged_at(NOW + timedelta(days=31))])
