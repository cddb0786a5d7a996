"""Secrets masked out of text bound for a message or a log line: URL passwords and tokens.

``mask_credentials`` is applied wherever a DSN or a driver's error text reaches a user: it
turns ``https://baton:s3cret@host/db`` into ``https://baton:***@host/db`` and a secret query
parameter (``?password=…``, ``access_token=…``) into ``***``. It masks what *looks like* a
credential in a URL; it cannot know a secret that appears bare in free text, so code must
not put one there in the first place (secrets live in ``SecretStr`` fields).
"""

from __future__ import annotations

import re

__all__ = ["MASK", "mask_credentials"]

MASK = "***"

# scheme://user:password@  (greedy to the last "@" of the word: a password that was not
# percent-encoded may hold "@", ":" or "/"; masking a bit too much is the safe side)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*:)\S*@")
# ?password=…&  ;password=…  — clickhouse-connect passes DSN query parameters on to the client
_SECRET_PARAM = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|access_token|token|secret|key_password)=)[^&\s#;]*",
    re.IGNORECASE,
)


def mask_credentials(text: str) -> str:
    """``text`` with every URL password and secret query parameter replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group('head')}{MASK}", text)
