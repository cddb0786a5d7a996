"""Free TCP port lookup for processes we start ourselves (embedded broker, Faust web port)."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The port is released before returning, so another process may grab it before the
    caller binds it; callers that start a server on it should retry with a new port when
    the bind fails (``EmbeddedBroker`` does).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
