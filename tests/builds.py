"""Which build of Baton's core this test process runs: the pure-Python one (the editable
install) or the compiled one (``BATON_COMPILE=1 pip install .`` first on PYTHONPATH, as
tests/integration/test_compiled_core.py runs the core unit tests), and the mark of a test
that only the interpreted build can run.

A compiled module reads its ``Final`` names and the functions it calls natively from C
statics: a monkeypatch of them does nothing there. A test that needs such a patch runs in
the interpreted build only, saying why (``interpreted_only``); a test that can patch what
both builds read should do that instead.
"""

from __future__ import annotations

import pytest

from baton.processors.compiled import compiled_modules

__all__ = ["COMPILED", "interpreted_only"]

#: whether this process imports a compiled replay core (any compiled ``baton`` module)
COMPILED: bool = bool(compiled_modules())


def interpreted_only(reason: str) -> pytest.MarkDecorator:
    """Skip the test in the compiled build, saying ``reason`` (what the compiled build cannot
    be made to do for it)."""
    return pytest.mark.skipif(COMPILED, reason=f"interpreted build only: {reason}")
