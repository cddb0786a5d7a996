"""The embedded broker is ready only when the socket on its port is its own (session 14).

Between ``EmbeddedBroker.start``'s free-port check and Tansu's bind, another process may take
the port: Tansu then dies of AddrInUse a few milliseconds later, and the readiness probe talks
to the *other* broker. A test froze that broker's pid and got a worker's allow from the broker
that really served the port. ``_serves_port`` asks /proc whose socket listens there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from baton.streams.embedded import EmbeddedBroker

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _broker_on(port: int, pid: int) -> EmbeddedBroker:
    broker = EmbeddedBroker(port=port)
    broker._port = port
    broker._proc = SimpleNamespace(pid=pid)  # type: ignore[assignment]
    return broker


def test_a_port_whose_socket_another_process_holds_is_not_served_by_ours() -> None:
    sock = _listening()
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert _broker_on(sock.getsockname()[1], stranger.pid)._serves_port() is False
    finally:
        stranger.kill()
        stranger.wait()
        sock.close()


def test_a_port_whose_socket_the_process_holds_is_served_by_it() -> None:
    sock = _listening()
    try:
        assert _broker_on(sock.getsockname()[1], os.getpid())._serves_port() is True
    finally:
        sock.close()


def test_a_port_nobody_listens_on_cannot_be_told() -> None:
    sock = _listening()
    port = sock.getsockname()[1]
    sock.close()
    assert _broker_on(port, os.getpid())._serves_port() is None


def test_a_descriptor_closed_while_listed_does_not_make_the_answer_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a starting process opens and closes files: one of its fds gone between the folder's
    # listing and its readlink said "cannot tell" (None) for the whole process (seen once in
    # the unit suite: a stranger's socket taken for unknown, not for "not ours")
    from baton.streams import embedded

    real = os.readlink
    calls = []

    def closed_first(path: object) -> str:
        calls.append(path)
        if len(calls) == 1:
            raise FileNotFoundError(path)
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(embedded.os, "readlink", closed_first)
    sock = _listening()
    try:
        assert _broker_on(sock.getsockname()[1], os.getpid())._serves_port() is True
    finally:
        sock.close()
