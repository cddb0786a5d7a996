"""Lets aiokafka's idempotent producer get its producer id from Tansu (InitProducerId v3).

aiokafka 0.14 asks for a producer id with InitProducerId v0 only. Tansu (0.6.0) reads the
``producer_id``/``producer_epoch`` fields that v3 added and answers a v0 request, which has
none, with UNKNOWN_SERVER_ERROR (its log: ``producer=None epoch=None``), so an idempotent
aiokafka producer cannot start on it. librdkafka uses v3 or v4 and works. ``install()``
gives aiokafka's sender a request that offers v3 too (-1/-1: a new producer), negotiated
per broker like any aiokafka request: a broker without v3 still gets v0.
"""

from __future__ import annotations

from typing import TypeAlias

from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.transaction import InitProducerIdRequest_v0
from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, Schema, TaggedFields

__all__ = ["install"]


class InitProducerIdResponse_v3(Response):
    API_KEY = 22
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class InitProducerIdRequest_v3(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 22
    API_VERSION = 3
    RESPONSE_TYPE = InitProducerIdResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("transaction_timeout_ms", Int32),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


_Structs: TypeAlias = InitProducerIdRequest_v0 | InitProducerIdRequest_v3


class InitProducerIdRequest(Request[_Structs]):
    """aiokafka's InitProducerId request, offering v3 as well as v0."""

    API_KEY = 22

    def __init__(self, transactional_id: str | None, transaction_timeout_ms: int) -> None:
        self._transactional_id = transactional_id
        self._transaction_timeout_ms = transaction_timeout_ms

    def build(self, request_struct_class: type[_Structs]) -> _Structs:
        if request_struct_class is InitProducerIdRequest_v3:
            # -1/-1: a new producer id (not the bump of an existing producer's epoch)
            return InitProducerIdRequest_v3(
                self._transactional_id, self._transaction_timeout_ms, -1, -1, {}
            )
        return InitProducerIdRequest_v0(self._transactional_id, self._transaction_timeout_ms)


def install() -> None:
    """Make aiokafka's sender ask for producer ids with the request above (idempotent: the
    same class every time; every aiokafka producer of the process uses it)."""
    from aiokafka.producer import sender

    sender.InitProducerIdRequest = InitProducerIdRequest  # type: ignore[misc]
