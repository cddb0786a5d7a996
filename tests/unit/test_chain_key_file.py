"""BATON_AUDIT_CHAIN_KEY_FILE and `baton keys chain` (schemas/chain_key.py, cli/keys_cmds.py):
the chain key handed over as a file, as the compose files' keys service makes it. A file that
is no key, or that others may read, is refused with its variable and path named and the key
never repeated; never both the variable and the file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli
from baton.processors.control_seal import chain_key, chain_key_id, seal_key
from baton.schemas.errors import ConfigError
from baton.schemas.settings import Settings

pytestmark = pytest.mark.unit

KEY = "5f" * 32  # 64 characters: BLAKE2b's longest key


@pytest.fixture(autouse=True)
def _no_baton_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("BATON_")]:
        monkeypatch.delenv(name)


def key_file(folder: Path, text: str | bytes, mode: int = 0o600) -> Path:
    path = folder / "chain.key"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(mode)
    return path


def settings_with(monkeypatch: pytest.MonkeyPatch, path: Path) -> Settings:
    monkeypatch.setenv("BATON_AUDIT_CHAIN_KEY_FILE", str(path))
    return Settings()


def keys_chain(path: Path) -> tuple[int, str]:
    _register()
    result = CliRunner().invoke(cli, ["keys", "chain", str(path)])
    return result.exit_code, result.output


def test_a_key_file_keys_the_workers_as_the_variable_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_file = settings_with(monkeypatch, key_file(tmp_path, KEY + "\n"))  # openssl's newline
    monkeypatch.delenv("BATON_AUDIT_CHAIN_KEY_FILE")
    monkeypatch.setenv("BATON_AUDIT_CHAIN_KEY", KEY)
    from_variable = Settings()
    assert chain_key(from_file) == chain_key(from_variable) == KEY.encode()
    # the workers seal with it, not with a data dir's seal.key
    assert seal_key(from_file) == KEY.encode()


def test_the_variable_and_the_file_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATON_AUDIT_CHAIN_KEY", "another-key")
    with pytest.raises(ConfigError) as caught:
        settings_with(monkeypatch, key_file(tmp_path, KEY))
    assert "BATON_AUDIT_CHAIN_KEY and BATON_AUDIT_CHAIN_KEY_FILE" in str(caught.value)
    assert "another-key" not in str(caught.value) and KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "mode", "said"),
    [
        (KEY, 0o644, "readable by others (mode 644)"),
        (KEY, 0o640, "readable by others (mode 640)"),
        ("", 0o600, "empty"),
        ("  \n", 0o600, "empty"),
        (KEY + "x", 0o600, "65 bytes; at most 64"),
        (b"\xff" + KEY.encode()[:10], 0o600, "not UTF-8"),
        ("k" * 5000, 0o600, "larger than 4096 bytes"),
    ],
    ids=["others-read", "group-reads", "empty", "blank", "65-bytes", "not-utf8", "5-kb"],
)
def test_a_file_that_is_no_key_or_that_others_may_read_is_refused_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | bytes, mode: int, said: str
) -> None:
    path = key_file(tmp_path, content, mode)
    with pytest.raises(ConfigError) as caught:
        settings_with(monkeypatch, path)
    message = str(caught.value)
    assert message.startswith(f"BATON_AUDIT_CHAIN_KEY_FILE: chain key file {path}: ")
    assert said in message
    assert KEY not in message  # the key, or a key too long, is never repeated


@pytest.mark.parametrize("kind", ["missing", "folder", "fifo"])
def test_a_path_that_is_no_file_is_refused_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    path = tmp_path / "chain.key"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path, 0o600)  # no writer: a blocking open would hang here
    with pytest.raises(ConfigError) as caught:
        settings_with(monkeypatch, path)
    said = {"missing": "no such file", "folder": "is a directory", "fifo": "FIFO"}[kind]
    assert said in str(caught.value) and str(path) in str(caught.value)


def test_keys_chain_makes_a_private_key_once_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "chain.key"
    code, said = keys_chain(path)
    assert code == 0, said
    text = path.read_text()
    assert len(text) == 65 and text.endswith("\n") and int(text[:64], 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key_id = chain_key_id(text.strip().encode())
    assert said.startswith(f"made chain key {path} (id {key_id})")
    assert text.strip() not in said  # only its id is printed
    code, again = keys_chain(path)
    assert code == 0 and again.startswith(f"kept chain key {path} (id {key_id})")
    assert path.read_text() == text  # never replaced


def test_keys_chain_refuses_a_file_others_may_read_or_a_link_planted_at_its_path(
    tmp_path: Path,
) -> None:
    shared = key_file(tmp_path, KEY, 0o644)
    code, said = keys_chain(shared)
    assert code == 2 and "readable by others (mode 644)" in said
    assert shared.read_text() == KEY  # not replaced either
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    planted = tmp_path / "planted.key"
    planted.symlink_to(key_file(theirs, KEY))  # a key its planter knows, mode 600
    code, said = keys_chain(planted)
    assert code == 2 and "is a link or not a file" in said and KEY not in said
