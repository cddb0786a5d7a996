"""Kafka's default key partitioner (Java ``Utils.murmur2``), so Python code can predict placement.

Every producer of run-keyed topics must place a run's events on one partition: the Java client,
Faust/aiokafka and librdkafka's ``murmur2_random`` all use this hash; confluent-kafka's default
(``consistent_random``, CRC32) does not. The worker uses ``partition_for`` to detect events a
foreign client put on the wrong partition, so this runs once per event on the hot path.

The hash is aiokafka's ``murmur2`` (the one Faust's producer places keys with), behind a key
cache. Measured against the hand-written version it replaced (bench/partitioner_bench.py, CPU
time on the shared 2-core VM): 1.7-1.8x slower per hash (~2.8 µs against ~1.5 µs for a
16-byte run id), 1.5-1.6x slower on the worker's mix of 30,000 events over 4,000 runs, where
a run's later events hit the cache: ~0.5 µs against ~0.3 µs per event, under 0.5 % of the
worker's ~50 µs per event. Importing it loads aiokafka's client (~0.2 s), which the worker
loads anyway.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2 as _unsigned_murmur2

__all__ = ["murmur2", "partition_for"]

# key -> unsigned murmur2(key). A run's events all carry the same key, so a run's 2nd..nth
# event is a dict hit. Cleared when full rather than LRU-evicted: simpler and cheaper per
# call, and a miss only costs one hash.
_CACHE: dict[bytes, int] = {}
_CACHE_MAX = 32_768


def _hash(key: bytes) -> int:
    h = _CACHE.get(key)
    if h is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        h = _CACHE[key] = _unsigned_murmur2(key)
    return h


def murmur2(key: bytes) -> int:
    """Kafka's ``Utils.murmur2(key)`` as a signed 32-bit int (same value as the Java client)."""
    h = _hash(key)
    return h - 0x1_0000_0000 if h & 0x8000_0000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` on a topic of ``partitions``.

    ``(murmur2(key) & 0x7fffffff) % partitions``: the Java client's ``toPositive`` masks the
    sign bit rather than taking ``abs``, and so do aiokafka and librdkafka's ``murmur2_random``.
    """
    h = _CACHE.get(key)
    if h is None:
        h = _hash(key)
    return (h & 0x7FFFFFFF) % partitions
