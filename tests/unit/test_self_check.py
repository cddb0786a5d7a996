"""The worker's start-up check of its batch step (processors/self_check.py): probe events as
Faust hands them over (headers as aiokafka's tuple) decided on a scratch state; a step that
raises or answers one with an ``engine_error`` dead letter ends ``baton worker`` at start,
exit 1, before it reaches Kafka. Run against the compiled build too (test_compiled_core's
CORE_TESTS): the build session 47 found dead-lettering every event fails it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli
from baton.processors.batch import BatchProcessor
from baton.processors.self_check import PROBE_RUN, BatchStepBroken, check_batch_step
from baton.processors.state import RunState
from baton.schemas.decision import Outcome
from baton.streams.topics import TopicCatalog
from tests.builds import interpreted_only
from tests.unit.test_engine_support import policy_with

pytestmark = pytest.mark.unit
#: the compiled build calls its own functions natively: a monkeypatch of them does nothing
_PATCHES = interpreted_only("patches the batch step, which compiled code calls natively")


@pytest.mark.parametrize("partitions", [1, 4, 8, 64])
def test_the_probes_are_decided_on_any_partition_count(partitions: int) -> None:
    catalog = TopicCatalog("p.", partitions)
    assert check_batch_step(policy_with(), catalog) == 2  # the handoff (once) and its cost


@_PATCHES
def test_any_outcome_passes_a_policy_that_stops_the_probe_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outcomes: list[str] = []
    process = BatchProcessor.process

    def noted(self: BatchProcessor, records: list, now: object) -> object:  # type: ignore[type-arg]
        out = process(self, records, now)  # type: ignore[arg-type]
        outcomes.extend(d.outcome for _, d in out.decisions)
        return out

    monkeypatch.setattr(BatchProcessor, "process", noted)
    assert check_batch_step(policy_with(max_agents_per_run=1), TopicCatalog("p.", 8)) == 2
    assert Outcome.STOP in outcomes, outcomes


@_PATCHES
def test_a_step_that_raises_on_a_faust_record_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # what mypyc's check of a declared list did with aiokafka's tuple of headers
    def refuse(state: RunState, *args: object, **kw: object) -> None:
        raise TypeError("list or None object expected; got tuple[()]")

    monkeypatch.setattr("baton.processors.batch.mark_read", refuse)  # as batch.py calls it
    with pytest.raises(BatchStepBroken, match=r"probe event.*TypeError: list or None") as err:
        check_batch_step(policy_with(), TopicCatalog("p.", 8))
    assert err.value.exit_code == 1


@_PATCHES
def test_a_step_that_escapes_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: BatchProcessor, records: list, now: object) -> object:  # type: ignore[type-arg]
        raise RuntimeError("boom")

    monkeypatch.setattr(BatchProcessor, "process", broken)
    with pytest.raises(BatchStepBroken, match="RuntimeError: boom"):
        check_batch_step(policy_with(), TopicCatalog("p.", 8))


@_PATCHES
def test_baton_worker_with_a_broken_step_exits_1_before_kafka(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(self: BatchProcessor, records: list, now: object) -> object:  # type: ignore[type-arg]
        raise TypeError("list or None object expected; got tuple[()]")

    monkeypatch.setattr(BatchProcessor, "process", broken)
    _register()
    # no broker at this address: the check answers first (the broker's would be exit 4)
    env = {"BATON_BOOTSTRAP": "127.0.0.1:1", "BATON_WORKER_DATA_DIR": str(tmp_path / "w")}
    result = CliRunner().invoke(cli, ["worker"], env=env)
    assert result.exit_code == 1, result.output
    assert "probe event" in result.output and "got tuple" in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "w").exists()  # nothing made before the check


def test_the_probe_run_is_a_valid_run_id() -> None:
    assert PROBE_RUN.isascii() and len(PROBE_RUN) < 256
