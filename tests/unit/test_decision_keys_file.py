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
    public.parent.mkdir(parents=True)
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
    assert Settings().decision_keys == settings.decision_keys  # the same keys twice: one
    other, _, _ = made(tmp_path / "other")
    monkeypatch.setenv("BATON_DECISION_KEYS", public_key_text(load_private_key(other)))
    with pytest.raises(ConfigError, match="BATON_DECISION_KEYS and BATON_DECISION_KEYS_FILE"):
        Settings()


def test_a_client_built_from_the_settings_takes_the_files_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`baton kill`, `approve`, `policy publish` and an SDK client given Settings() rebuild
    them from a dump, which carried both the file and the keys read from it: "give one", the
    kill switch refused to start (h48b F1); the chain key file alike."""
    from baton.streams.sdk.options import ClientOptions

    _, public, _ = made(tmp_path)
    chain = tmp_path / "chain.key"
    chain.write_text("5f" * 32 + "\n")
    chain.chmod(0o600)
    monkeypatch.setenv("BATON_DECISION_KEYS_FILE", str(public))
    monkeypatch.setenv("BATON_AUDIT_CHAIN_KEY_FILE", str(chain))
    settings = Settings()
    options = ClientOptions.resolve(settings=settings)
    assert options.decision_keys and Settings(**settings.model_dump()).decision_keys


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


def test_public_out_never_replaces_a_private_key_or_another_file(tmp_path: Path) -> None:
    """It replaced another key's private file with public text, for good (h48b F3)."""
    bob_dir = tmp_path / "bob"
    assert keys_new("bob", "--dir", str(bob_dir))[0] == 0
    bob = (bob_dir / "bob.key").read_bytes()
    code, _, err = keys_new(
        "alice", "--dir", str(tmp_path), "--public-out", str(bob_dir / "bob.key")
    )
    assert code == 2 and "holds something else than public keys" in err
    assert (bob_dir / "bob.key").read_bytes() == bob
    own = tmp_path / "carol.key"
    code, _, err = keys_new("carol", "--dir", str(tmp_path), "--public-out", str(own))
    assert code == 2 and "is the private key file itself" in err
    nowhere = tmp_path / "no such folder" / "dave.pub"
    code, _, err = keys_new("dave", "--dir", str(tmp_path), "--public-out", str(nowhere))
    assert code == 2 and err.strip().endswith("give a writable --public-out"), err
    assert "--data-dir" not in err  # (the data dir's wording, which names no option here)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_keep_refuses_a_key_someone_else_put_there(tmp_path: Path) -> None:
    """A key another user made (or linked) at the path was kept and signed with (h48b F4)."""
    private, _, _ = made(tmp_path)
    os.chown(private, 65534, 65534)
    code, _, err = keys_new("workers", "--dir", str(private.parent), "--keep")
    assert code == 2 and "owned by another user (uid 65534)" in err
    os.chown(private, 0, 0)
    link_dir = tmp_path / "linked"
    link_dir.mkdir()
    (link_dir / "workers.key").symlink_to(private)
    code, _, err = keys_new("workers", "--dir", str(link_dir), "--keep")
    assert code == 2 and "a link or not a file" in err


def test_keeps_racing_on_a_fresh_folder_all_sign_with_one_key(tmp_path: Path) -> None:
    """A racing --keep read the key half-written and failed (9 of 400 runs; h48b F5)."""
    import subprocess
    import sys

    args = ["keys", "new", "workers", "--dir", str(tmp_path / "keys"), "--keep"]
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "baton.cli", *args], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    lines = {run.communicate(timeout=60)[0] for run in runs}
    assert [run.returncode for run in runs] == [0] * 4 and len(lines) == 1


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_a_public_file_in_a_folder_others_may_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    """A root-owned 644 file renamed over it, or a link put in its place, passed every check of
    the file itself: the alerter took the key its replacer chose (h48b F2). A sticky folder
    (/tmp) keeps others from replacing it, and is fine."""
    _, public, _ = made(tmp_path)
    public.parent.chmod(mode)
    monkeypatch.setenv("BATON_DECISION_KEYS_FILE", str(public))
    with pytest.raises(ConfigError, match=f"which others may write \\(mode {mode:o}\\)"):
        Settings()
    public.parent.chmod(mode | stat.S_ISVTX)
    assert Settings().decision_keys


def test_a_private_key_given_as_the_public_keys_is_not_repeated(tmp_path: Path) -> None:
    """BATON_DECISION_KEYS=<a private key's text> printed the private key whole (h48b F8)."""
    from baton.schemas.env_names import settings_problems

    private, _, _ = made(tmp_path)
    text = private.read_text().strip()
    with pytest.raises(Exception) as caught:
        Settings(decision_keys=text)
    said = settings_problems(caught.value)
    assert "not repeated: a private key" in said and text.split(":")[1] not in said
