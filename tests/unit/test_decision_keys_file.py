"""BATON_DECISION_KEYS_FILE and `baton keys new --keep --public-out` (schemas/key_files.py,
cli/keys_cmds.py): the workers' signing key made once per deployment and its public half in a
file the alerter reads (the compose files' signing-key service). A public key file others may
write, another user's, an empty one or one that holds no key is refused, never taken as "no
keys" (checking would be off)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from baton.cli.main import _register, cli
from baton.schemas.decision_signing import decision_keys
from baton.schemas.errors import ConfigError
from baton.schemas.settings import Settings
from baton.schemas.signing import load_private_key, public_key_text

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _no_baton_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("BATON_")]:
        monkeypatch.delenv(name)


def keys_new(*args: str) -> tuple[int, str, str]:
    _register()
    result = CliRunner().invoke(cli, ["keys", "new", *args])
    return result.exit_code, result.stdout, result.stderr


def made(folder: Path) -> tuple[Path, Path, str]:
    """The signing-key service's command here: (private key, public file, its line)."""
    private, public = folder / "keys" / "workers.key", folder / "public" / "workers.pub"
    public.parent.mkdir()
    args = ["workers", "--dir", str(private.parent), "--keep", "--public-out", str(public)]
    code, out, err = keys_new(*args)
    assert code == 0, err
    return private, public, out


def test_keep_makes_the_key_once_and_writes_its_public_half_every_time(tmp_path: Path) -> None:
    private, public, line = made(tmp_path)
    key_text = public_key_text(load_private_key(private))
    assert line.strip() == f'workers: "{key_text}"'
    assert public.read_text() == key_text + "\n"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    first = private.read_bytes()
    public.write_text("ed25519:stale\n")
    args = ["workers", "--dir", str(private.parent), "--keep", "--public-out", str(public)]
    code, again, err = keys_new(*args)
    assert code == 0 and again == line and err.startswith(f"kept {private}")
    assert private.read_bytes() == first and public.read_text() == key_text + "\n"
    # without --keep an existing key is still refused, as before
    code, _, err = keys_new("workers", "--dir", str(private.parent))
    assert code == 2 and "already exists" in err


def test_keep_refuses_a_private_key_others_may_read(tmp_path: Path) -> None:
    private, _, _ = made(tmp_path)
    private.chmod(0o644)
    code, _, err = keys_new("workers", "--dir", str(private.parent), "--keep")
    assert code == 2 and "readable by others" in err


def test_the_public_file_gives_the_keys_the_variable_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private, public, _ = made(tmp_path)
    monkeypatch.setenv("BATON_DECISION_KEYS_FILE", str(public))
    settings = Settings()
    assert settings.decision_keys == public_key_text(load_private_key(private))
    assert decision_keys(settings.decision_keys)  # the alerter's check is on
    monkeypatch.setenv("BATON_DECISION_KEYS", settings.decision_keys)
    with pytest.raises(ConfigError, match="BATON_DECISION_KEYS and BATON_DECISION_KEYS_FILE"):
        Settings()


@pytest.mark.parametrize(
    ("content", "mode", "said"),
    [
        ("", 0o644, "empty, which would take any decision"),
        ("\n", 0o644, "empty, which would take any decision"),
        ("ed25519:not-a-key\n", 0o644, "BATON_DECISION_KEYS_FILE: public keys file"),
        (None, 0o664, "writable by others (mode 664)"),
        (None, 0o646, "writable by others (mode 646)"),
    ],
    ids=["empty", "blank", "no-key", "group-writes", "others-write"],
)
def test_a_public_file_that_is_no_key_or_others_may_replace_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, mode: int, said: str
) -> None:
    _, public, _ = made(tmp_path)
    if content is not None:
        public.write_text(content)
    public.chmod(mode)
    monkeypatch.setenv("BATON_DECISION_KEYS_FILE", str(public))
    with pytest.raises(ConfigError) as caught:
        Settings()
    assert said in str(caught.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_public_file_another_user_owns_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its owner could put their own key in it: the alerter would take their signatures."""
    _, public, _ = made(tmp_path)
    os.chown(public, 65534, 65534)
    monkeypatch.setenv("BATON_DECISION_KEYS_FILE", str(public))
    with pytest.raises(ConfigError, match=r"owned by another user \(uid 65534"):
        Settings()


@pytest.mark.parametrize("kind", ["missing", "folder", "fifo", "empty-variable"])
def test_a_public_path_that_is_no_file_is_refused_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    path = tmp_path / "workers.pub"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    monkeypatch.setenv("BATON_DECISION_KEYS_FILE", " " if kind == "empty-variable" else str(path))
    said = {"missing": "no such file", "folder": "is a directory", "fifo": "FIFO"}
    with pytest.raises(Exception, match=said.get(kind, "empty; unset it")):
        Settings()
