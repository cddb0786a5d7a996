"""The worker's reply spill takes its bound from BATON_SPILL_MAX_BYTES (session 18: the bound
was a constant 1 GiB, ~300k decoded long runs, so the memory target at 1M runs could not be
met by any configuration); a bound below a segment's size is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from baton.cli.worker_cmd import spill_replies
from baton.processors import state_spill
from baton.schemas.settings import Settings


def test_the_worker_spills_up_to_the_configured_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_WORKER_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BATON_SPILL_MAX_BYTES", str(8 << 30))
    try:
        spill_replies(Settings())
        spill = state_spill.active()
        assert spill is not None and spill.max_bytes == 8 << 30
    finally:
        state_spill.disable()
    assert Settings.model_fields["spill_max_bytes"].default == state_spill.MAX_BYTES


def test_a_bound_below_a_segment_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_SPILL_MAX_BYTES", "4096")
    with pytest.raises(ValidationError, match="spill_max_bytes"):
        Settings()
