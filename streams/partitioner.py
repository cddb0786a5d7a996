"""Kafka's default key partitioner (Java ``Utils.murmur2``), so Python code can predict placement.

Every producer of run-keyed topics must place a run's events on one partition: the Java client,
Faust/aiokafka and librdkafka's ``murmur2_random`` all use this hash; confluent-kafka's default
(``consistent_random``, CRC32) does not. The worker uses ``partition_for`` to detect events a
foreign client put on the wrong partition, so this runs once per event on the hot path.
"""

from __future__ import annotations

import struct

__all__ = ["murmur2", "partition_for"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK32 = 0xFFFFFFFF

# struct.Struct per number of 4-byte words, so each call unpacks all words in one C call
# instead of assembling them byte by byte in Python (aiokafka's version does that: ~3x slower).
_WORDS: dict[int, struct.Struct] = {}

# key -> murmur2(key). A run's events all carry the same key, so a run's 2nd..nth event is a
# dict hit. Cleared when full rather than LRU-evicted: simpler and cheaper per call, and a
# miss only costs one hash.
_CACHE: dict[bytes, int] = {}
_CACHE_MAX = 32_768


def _murmur2(key: bytes, m: int = _M, mask: int = _MASK32) -> int:
    # m and mask as locals: LOAD_FAST instead of a global lookup, ~20% of this loop's time
    length = len(key)
    h = (_SEED ^ length) & mask
    words = length >> 2
    if words:
        unpack = _WORDS.get(words)
        if unpack is None:
            unpack = _WORDS[words] = struct.Struct(f"<{words}I")  # Java reads little-endian
        for k in unpack.unpack_from(key):
            k = (k * m) & mask
            k ^= k >> 24
            h = ((h * m) & mask) ^ ((k * m) & mask)
    tail = length & 3
    if tail:
        base = length & ~3
        # Java's switch falls through: 3 adds byte 2, then byte 1, then byte 0 and multiplies
        if tail == 3:
            h ^= key[base + 2] << 16
        if tail >= 2:
            h ^= key[base + 1] << 8
        h = ((h ^ key[base]) * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    # Java returns a signed int; keep that so values compare 1:1 with Kafka's own test vectors
    return h - 0x1_0000_0000 if h & 0x8000_0000 else h


def murmur2(key: bytes) -> int:
    """Kafka's ``Utils.murmur2(key)`` as a signed 32-bit int (same value as the Java client)."""
    h = _CACHE.get(key)
    if h is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        h = _CACHE[key] = _murmur2(key)
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` on a topic of ``partitions``.

    ``(murmur2(key) & 0x7fffffff) % partitions``: the Java client's ``toPositive`` masks the
    sign bit rather than taking ``abs``, and so do aiokafka and librdkafka's ``murmur2_random``.
    """
    h = _CACHE.get(key)
    if h is None:
        h = murmur2(key)
    return (h & 0x7FFFFFFF) % partitions
