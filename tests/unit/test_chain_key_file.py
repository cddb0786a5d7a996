"""BATON_AUDIT_CHAIN_KEY_FILE and `baton keys chain` (schemas/key_files.py, cli/keys_cmds.py):
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
        ("  \n", 0o600, "around the key"),
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


@pytest.mark.parametrize(
    ("content", "key"),
    [(KEY + "\n", KEY), (KEY + "\r\n", KEY), ("pass phrase\n", "pass phrase"), (KEY, KEY)],
    ids=["newline", "crlf", "inner-space", "no-newline"],
)
def test_the_file_gives_the_key_the_same_text_in_the_variable_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, key: str
) -> None:
    from_file = settings_with(monkeypatch, key_file(tmp_path, content))
    monkeypatch.delenv("BATON_AUDIT_CHAIN_KEY_FILE")
    monkeypatch.setenv("BATON_AUDIT_CHAIN_KEY", key)
    assert chain_key(from_file) == chain_key(Settings()) == key.encode()


@pytest.mark.parametrize(
    "content",
    ["pass phrase \n", " " + KEY[:40], KEY[:40] + "\n\n", "\ufeff" + KEY[:40], KEY[:40] + "\t"],
    ids=["trailing-space", "leading-space", "two-newlines", "byte-order-mark", "tab"],
)
def test_space_around_the_key_is_refused_not_stripped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    """Stripped, "pass phrase \\n" gave "pass phrase" where BATON_AUDIT_CHAIN_KEY="pass phrase "
    keys with the space: a worker given the file and a sink given the variable disagreed, and
    the sink refused every record as forged (h48a F3)."""
    with pytest.raises(ConfigError) as caught:
        settings_with(monkeypatch, key_file(tmp_path, content))
    assert "around the key" in str(caught.value) and KEY[:40] not in str(caught.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_key_file_another_user_owns_is_refused_even_through_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One planted in /tmp by another user, mode 600, was taken (h48a F2): its maker knows it."""
    planted = key_file(tmp_path, KEY)
    os.chown(planted, 65534, 65534)
    link = tmp_path / "link.key"
    link.symlink_to(planted)
    for path in (planted, link):
        with pytest.raises(ConfigError, match=r"owned by another user \(uid 65534"):
            settings_with(monkeypatch, path)


def test_an_empty_path_is_refused_as_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """`BATON_AUDIT_CHAIN_KEY_FILE: ${X:-}`: "." was read, "is a directory" (h48a F5)."""
    monkeypatch.setenv("BATON_AUDIT_CHAIN_KEY_FILE", " ")
    with pytest.raises(Exception, match="empty; unset it"):
        Settings()


def test_keys_chain_refuses_an_empty_file_it_cannot_have_written(tmp_path: Path) -> None:
    empty = key_file(tmp_path, "")
    code, said = keys_chain(empty)
    assert code == 2 and "is empty" in said and "remove it" in said


def test_keys_chains_started_together_keep_one_key(tmp_path: Path) -> None:
    """The one that lost the race read the file before the other had written it, and failed
    (h48a F4): a key is linked in whole now."""
    import subprocess
    import sys

    path = tmp_path / "chain.key"
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "baton.cli", "keys", "chain", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    said = [run.communicate(timeout=60)[0] for run in runs]
    assert [run.returncode for run in runs] == [0] * 4, said
    key_id = chain_key_id(path.read_text().strip().encode())
    assert sorted(line.split()[0] for line in said) == ["kept", "kept", "kept", "made"]
    assert all(f"(id {key_id})" in line for line in said)
    assert [p.name for p in tmp_path.iterdir()] == ["chain.key"]  # no temp file left


def test_baton_up_gives_its_children_the_key_it_read_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child restarted after the file changed read another key: the sink refused its
    decisions as forged, it refused its runs' states (h48a F1)."""
    from baton.cli.up_children import frozen_keys

    settings = settings_with(monkeypatch, key_file(tmp_path, KEY + "\n"))
    env = {"PATH": "/bin", "BATON_AUDIT_CHAIN_KEY_FILE": "x", "baton_audit_chain_key_file": "y"}
    env["BATON_DECISION_KEYS_FILE"] = "z"  # the stack gives its own BATON_DECISION_KEYS
    assert frozen_keys(env, settings) == {"PATH": "/bin", "BATON_AUDIT_CHAIN_KEY": KEY}
    monkeypatch.delenv("BATON_AUDIT_CHAIN_KEY_FILE")
    assert frozen_keys({"PATH": "/bin"}, Settings()) == {"PATH": "/bin"}


def test_doctor_names_the_file_and_the_keys_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from baton.cli.doctor_seal import chain_key_check, seal_key_check

    path = key_file(tmp_path, KEY)
    settings = settings_with(monkeypatch, path)
    chain = chain_key_check(settings, None)
    assert f"BATON_AUDIT_CHAIN_KEY_FILE ({path}), id {chain_key_id(KEY.encode())}" in str(chain)
    assert f"BATON_AUDIT_CHAIN_KEY_FILE ({path})" in str(seal_key_check(settings, None))
