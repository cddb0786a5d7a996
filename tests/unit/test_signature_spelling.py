"""A signature verifies only in its one canonical base64 spelling: the character before `==`
carries 4 bits decoding ignores, so another spelling of the same 64 bytes verified, and a
copy of a command the workers refused, so spelled, had another refusal id and was issued
again by a restart (session 39, G3)."""

from __future__ import annotations

import base64

import pytest

from baton.schemas.signing import new_private_key, sign, verify

pytestmark = pytest.mark.unit


def test_only_the_canonical_spelling_of_a_signature_verifies() -> None:
    key = new_private_key()
    signature = sign(key, b"payload")
    assert verify(key.public_key(), b"payload", signature)
    last = signature[-3]  # the character before "=="
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    other = alphabet[alphabet.index(last) ^ 1]  # one of the ignored bits flipped
    respelled = signature[:-3] + other + "=="
    assert base64.b64decode(respelled) == base64.b64decode(signature)  # the same bytes
    assert not verify(key.public_key(), b"payload", respelled)
