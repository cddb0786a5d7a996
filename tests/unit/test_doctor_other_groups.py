"""`baton doctor`'s check for a second fleet: any consumer group but BATON_APP_ID with offsets
on the requests topic. The broker's answers here are stand-ins (the real broker's are in
tests/integration/test_doctor.py); what is tested is what the check makes of each."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from baton.cli import doctor_kafka
from baton.cli.doctor_checks import Status
from baton.cli.doctor_kafka import KafkaView, other_groups_check
from baton.schemas.settings import Settings

pytestmark = pytest.mark.unit

REQUESTS = "gov.handoff.requests"


def _done(value: Any = None, error: BaseException | None = None) -> Future[Any]:
    future: Future[Any] = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
    return future


def _denied(code: int) -> KafkaException:
    return KafkaException(KafkaError(code))


@dataclass
class _Listed:
    valid: list[Any]


@dataclass
class _Group:
    group_id: str


@dataclass
class _Offsets:
    topic_partitions: list[TopicPartition]


class _Admin:
    """Answers as a broker whose groups have read (offset 0) or not (-1001) the topic."""

    def __init__(self, groups: dict[str, Any], listing: BaseException | None = None) -> None:
        self.groups, self.listing, self.asked = groups, listing, 0

    def list_consumer_groups(self, request_timeout: float) -> Future[Any]:
        return _done(_Listed([_Group(g) for g in self.groups]), self.listing)

    def list_consumer_group_offsets(self, request: list[Any], request_timeout: float) -> Any:
        self.asked += 1
        group = request[0].group_id
        answer = self.groups[group]
        if isinstance(answer, BaseException):
            return {group: _done(error=answer)}
        offsets = [TopicPartition(REQUESTS, p, answer) for p in range(2)]
        return {group: _done(_Offsets(offsets))}


def _check(admin: _Admin) -> Any:
    settings = Settings(app_id="baton")
    return other_groups_check(admin, settings, KafkaView({REQUESTS: 2}, {}, {}), 1.0)


def test_only_the_workers_group_read_the_events() -> None:
    check = _check(_Admin({"baton": 0, "baton-audit": -1001, "alerts": -1001}))
    assert check.status is Status.OK and check.detail == "none: 2 other group(s) asked"


def test_a_second_fleet_is_named_with_the_fix() -> None:
    check = _check(_Admin({"baton": 0, "staging": 0, "x" * 60_000: 5}))
    assert check.status is Status.FAIL
    assert "2 group(s) besides 'baton' have read it: 'staging', 'xxx" in check.detail
    assert len(check.detail) < 600  # a 60 KB group name is cut
    assert "BATON_APP_ID=baton" in check.hint and "--delete --group" in check.hint


def test_a_principal_not_allowed_to_list_groups_is_told_not_failed() -> None:
    # listing every group needs Describe on the cluster, which an app's principal often lacks:
    # a readiness probe on `baton doctor` must not fail for it
    admin = _Admin({}, listing=_denied(KafkaError.CLUSTER_AUTHORIZATION_FAILED))
    check = _check(admin)
    assert check.status is Status.SKIP and "not allowed to list" in check.detail


def test_a_group_it_may_not_describe_is_counted_as_not_asked() -> None:
    admin = _Admin({"mine": -1001, "theirs": _denied(KafkaError.GROUP_AUTHORIZATION_FAILED)})
    check = _check(admin)
    assert check.status is Status.OK
    assert check.detail == "none: 1 other group(s) asked (1 more group(s) not asked or not allowed)"


def test_a_broker_that_does_not_answer_fails_the_check() -> None:
    listing = _check(_Admin({}, listing=_denied(KafkaError._TIMED_OUT)))
    assert listing.status is Status.FAIL and "cannot list the consumer groups" in listing.detail
    one = _check(_Admin({"g": _denied(KafkaError._TIMED_OUT)}))
    assert one.status is Status.FAIL and "cannot read group 'g'" in one.detail


def test_at_most_so_many_groups_are_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_kafka, "MAX_GROUPS_ASKED", 3)
    admin = _Admin({f"g{i}": -1001 for i in range(10)})
    check = _check(admin)
    assert admin.asked == 3 and "(7 more group(s) not asked or not allowed)" in check.detail


def test_no_requests_topic_fails_the_check() -> None:
    check = other_groups_check(_Admin({}), Settings(app_id="baton"), KafkaView({}, {}, {}), 1.0)
    assert check.status is Status.FAIL and "no gov.handoff.requests to check" in check.detail
