"""A sink's parse process whose sink is gone ends quietly (H2, session 34: its BrokenPipeError
traceback reached `baton up`'s terminal at every sink crash)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def test_a_parse_process_whose_sink_is_gone_exits_without_a_traceback() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "baton.sinks.sink_parse", "gov.decisions"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the sink killed: nobody reads its answers
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
