"""Session 17 (H3): the signed control plane attacked again.

F3: base64 of 32 bytes ends in a character with two spare bits, which ``b64decode`` ignores:
one public key has four spellings. ``operators`` refused one key under two names by comparing
the key *texts* (session 10), so a policy listing the key twice, spelled two ways, loaded, and
the key's holder signed as both operators.
"""

from __future__ import annotations

import string

import pytest

from baton.schemas.errors import PolicyError
from baton.schemas.policy import parse_policy
from baton.schemas.signing import PUBLIC_PREFIX, new_private_key, parse_public_key, public_key_text

pytestmark = pytest.mark.unit

_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"


def _respelled(text: str) -> str:
    """The same public key, its last base64 character's spare bits changed."""
    body = text.removeprefix(PUBLIC_PREFIX)
    last = _ALPHABET[_ALPHABET.index(body[-2]) ^ 1]
    return PUBLIC_PREFIX + body[:-2] + last + body[-1]


def test_one_key_spelled_two_ways_under_two_operators_is_refused() -> None:
    key = public_key_text(new_private_key())
    other = _respelled(key)
    assert other != key
    assert parse_public_key(other).public_bytes_raw() == parse_public_key(key).public_bytes_raw()
    with pytest.raises(PolicyError, match="oncall and oncall_2027 hold the same public key"):
        parse_policy(f'operators:\n  oncall: "{key}"\n  oncall_2027: "{other}"\n', "p.yaml")


def test_two_keys_under_two_operators_still_load() -> None:
    one, two = (public_key_text(new_private_key()) for _ in range(2))
    policy = parse_policy(f'operators:\n  oncall: "{one}"\n  oncall_2027: "{two}"\n', "p.yaml")
    assert list(policy.operators) == ["oncall", "oncall_2027"]
