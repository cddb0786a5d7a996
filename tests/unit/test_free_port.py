"""`free_port` picks below the kernel's ephemeral range: a port of that range, once released,
can become the local port of an outgoing connection before the caller binds it (CI, session
42: a `baton up` sink's metrics port taken so, the sink never started)."""

from __future__ import annotations

import socket

import pytest

from baton.streams import net


def test_a_free_port_is_below_the_ephemeral_range_and_binds() -> None:
    low = net._ephemeral_low()
    for _ in range(20):
        port = net.free_port()
        assert net._LOWEST <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_range_that_leaves_no_room_below_it_falls_back_to_any_free_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(net, "_ephemeral_low", lambda: 5_000)
    assert 0 < net.free_port() < 65_536


def test_ports_taken_below_the_range_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy, spare = taken.getsockname()[1], net.free_port()
        picks = iter([busy, busy, spare])
        monkeypatch.setattr(net, "_ephemeral_low", lambda: 65_000)
        monkeypatch.setattr(net.random, "randrange", lambda a, b: next(picks))
        assert net.free_port() == spare
