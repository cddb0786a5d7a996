"""Asks a SQL endpoint ``SELECT 1`` with the token of its DSN: does it answer?"""

from __future__ import annotations

import base64
import http.client
import urllib.error
import urllib.request
from urllib.parse import urlsplit

__all__ = ["sql_endpoint_answers"]


def sql_endpoint_answers(dsn: str, timeout_s: float) -> bool:
    """True when ``http://user:token@host:port`` answers ``SELECT 1`` with 200 within
    ``timeout_s``; anything else (no host or port, refused, timed out, not HTTP, another
    status) is False, never an exception: the DSN comes from a file others may write."""
    try:
        parts = urlsplit(dsn)
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number, an unclosed IPv6 bracket
        return False
    if host is None or port is None:
        return False
    basic = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    netloc = f"[{host}]" if ":" in host else host
    request = urllib.request.Request(
        f"http://{netloc}:{port}/?query=SELECT+1", headers={"Authorization": f"Basic {basic}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError):
        return False
