"""Keys placed per second: aiokafka's murmur2 (what streams/partitioner.py uses) against ours.

"ours" is the hand-written murmur2 streams/partitioner.py had before it took aiokafka's (all
words unpacked in one ``struct`` call instead of byte by byte), kept here as the reference
the switch was measured against (issue 17: keep ours only if the library is >2x slower on
the hot path; it was 1.5-1.8x). The worker calls ``partition_for`` once per event (the
misplaced-event check), the SDK once per request. Three mixes: every key new, as 16-byte run
ids and as 36-byte uuids (cache misses only: the hash itself), and the worker's mix (30,000
events over 4,000 runs: a run's later events hit the cache). Best of ``--repeat`` runs in
CPU time (the machine is shared); keys are built before the clock starts.

    python bench/partitioner_bench.py
"""

from __future__ import annotations

import argparse
import random
import struct
import time
import uuid
from collections.abc import Callable

from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from baton.streams import partitioner
from baton.streams.partitioner import partition_for

PARTITIONS = 12
_WORDS: dict[int, struct.Struct] = {}


def _hand_written_murmur2(key: bytes, m: int = 0x5BD1E995, mask: int = 0xFFFFFFFF) -> int:
    """The former streams/partitioner.py hash (unsigned): whole words per ``struct`` call."""
    length = len(key)
    h = (0x9747B28C ^ length) & mask
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
        if tail == 3:
            h ^= key[base + 2] << 16
        if tail >= 2:
            h ^= key[base + 1] << 8
        h = ((h ^ key[base]) * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def _aiokafka_partition_for(key: bytes, partitions: int) -> int:
    return (aiokafka_murmur2(key) & 0x7FFFFFFF) % partitions


def _ours_cached(cache: dict[bytes, int]) -> Callable[[bytes, int], int]:
    """The hand-written hash behind the same key cache streams/partitioner.py has."""

    def place(key: bytes, partitions: int) -> int:
        h = cache.get(key)
        if h is None:
            if len(cache) >= 32_768:
                cache.clear()
            h = cache[key] = _hand_written_murmur2(key)
        return (h & 0x7FFFFFFF) % partitions

    return place


def _ours_uncached(key: bytes, partitions: int) -> int:
    return (_hand_written_murmur2(key) & 0x7FFFFFFF) % partitions


def _rate(
    place: Callable[[bytes, int], int], keys: list[bytes], repeat: int, reset: Callable[[], None]
) -> float:
    best = float("inf")
    for _ in range(repeat):
        reset()
        started = time.process_time()
        for key in keys:
            place(key, PARTITIONS)
        best = min(best, time.process_time() - started)
    return len(keys) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=4_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    rng = random.Random(17)
    runs = [
        f"run_{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}".encode() for _ in range(args.runs)
    ]
    mixes = {
        "every key new (16 B)": [f"run_{i:012d}".encode() for i in range(args.keys)],
        "every key new (36 B uuid)": [
            str(uuid.UUID(int=rng.getrandbits(128))).encode() for _ in range(args.keys)
        ],
        f"worker mix ({args.keys:,} events / {args.runs:,} runs)": [
            rng.choice(runs) for _ in range(args.keys)
        ],
    }
    assert all(_hand_written_murmur2(k) == aiokafka_murmur2(k) for ks in mixes.values() for k in ks)
    ours_cache: dict[bytes, int] = {}

    def reset() -> None:
        partitioner._CACHE.clear()
        ours_cache.clear()

    variants = {
        "ours (cache)": _ours_cached(ours_cache),
        "ours (hash only)": _ours_uncached,
        "aiokafka (cache, partition_for)": partition_for,
        "aiokafka (hash only)": _aiokafka_partition_for,
    }
    print(f"| keys | {' | '.join(variants)} | ours / aiokafka (cache) |")
    print(f"|---|{'---|' * len(variants)}---|")
    for name, keys in mixes.items():
        rates = {v: _rate(place, keys, args.repeat, reset) for v, place in variants.items()}
        ratio = rates["ours (cache)"] / rates["aiokafka (cache, partition_for)"]
        cells = " | ".join(f"{r:,.0f}/s" for r in rates.values())
        print(f"| {name} | {cells} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
