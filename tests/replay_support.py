"""`baton replay --from-kafka --redecide` run as its own process, as an operator runs it, for
the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["replay_from_kafka"]


def replay_from_kafka(
    bootstrap: str,
    prefix: str,
    partitions: int,
    policy: Path,
    baseline: Path,
    *options: str,
) -> subprocess.CompletedProcess[str]:
    """`baton replay --from-kafka --redecide` of the topics under ``prefix`` (``partitions``
    each) at ``bootstrap``: ``policy`` against ``baseline``, with ``options`` (``--format
    json``, ``--since T`` …); no other BATON_ setting of this process reaches it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    env.update(BATON_TOPIC_PREFIX=prefix, BATON_PARTITIONS=str(partitions))
    return subprocess.run(
        [
            *(sys.executable, "-m", "baton.cli", "replay", "--from-kafka", "--redecide"),
            *("--bootstrap", bootstrap, "--policy", str(policy), "--baseline", str(baseline)),
            *options,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
