"""murmur2 places keys exactly where Kafka's Java client, Faust/aiokafka and librdkafka do."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from baton.streams import partitioner
from baton.streams.partitioner import murmur2, partition_for

pytestmark = pytest.mark.unit

# org.apache.kafka.common.utils.UtilsTest.testMurmur2 (signed Java ints), plus the empty key
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
    b"": 275646681,
}

# kafka-python's test_murmur2_java_compatibility: partitions out of 1000 from the Java client
JAVA_PARTITIONS_OF_1000 = {
    b"": 681,
    b"a": 524,
    b"ab": 434,
    b"abc": 107,
    b"123456789": 566,
    b"\x00 ": 742,
}


@pytest.mark.parametrize(("key", "expected"), JAVA_VECTORS.items())
def test_murmur2_equals_the_java_client(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected
    assert murmur2(key) == expected  # second call is served by the cache: same answer


@pytest.mark.parametrize(("key", "expected"), JAVA_PARTITIONS_OF_1000.items())
def test_partition_for_equals_the_java_default_partitioner(key: bytes, expected: int) -> None:
    assert partition_for(key, 1000) == expected


@given(st.binary(max_size=200))
def test_murmur2_agrees_with_aiokafka_for_any_key(key: bytes) -> None:
    # aiokafka is Faust's producer: the worker and Faust must agree on every key
    partitioner._CACHE.clear()
    assert murmur2(key) & 0xFFFFFFFF == aiokafka_murmur2(key)


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partitioner, "_CACHE_MAX", 10)
    partitioner._CACHE.clear()
    for i in range(25):
        assert partition_for(b"run-%d" % i, 8) == (aiokafka_murmur2(b"run-%d" % i) & 0x7FFFFFFF) % 8
    assert len(partitioner._CACHE) <= 10
