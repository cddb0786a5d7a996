"""The ``baton up`` a demo starts for itself: started, waited for until it is ready, stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from baton.schemas.errors import BatonError, ConfigError

if TYPE_CHECKING:
    pass

__all__ = ["DemoStack", "live_stack"]

_READY = re.compile(r"ready bootstrap=(?P<bootstrap>\S+)(?: sql=(?P<sql>\S+))?")


def live_stack(data_dir: Path) -> tuple[str, str, int] | None:
    """The ``baton up`` running with ``data_dir``, if one does: how it reads (pid, start,
    Kafka), the `baton demo` command that plays against it (with its SQL endpoint's DSN),
    and its pid."""
    from baton.cli.stack_file import read_record

    try:
        record = read_record(data_dir)
    except ConfigError:
        return None  # not a record: `baton up` names the file
    if record is None or not record.live(data_dir):
        return None
    from baton.sinks.clickhouse import read_endpoint

    dsn = read_endpoint(data_dir / "chdb") if record.sql_url else None
    command = f"baton demo --bootstrap {record.bootstrap}" + (f" --sql {dsn}" if dsn else "")
    return f"{record.describe()}, Kafka at {record.bootstrap}", command, record.pid


class DemoStack:
    """``baton up`` as a child process in ``data_dir``: started, parsed, stopped (or kept)."""

    def __init__(self, data_dir: Path, keep: bool) -> None:
        self.data_dir = data_dir
        self.keep = keep
        self.proc: subprocess.Popen[bytes] | None = None
        self.bootstrap = ""
        self.sql_url: str | None = None

    def start(self, timeout: float = 120.0) -> None:
        from baton.streams.net import free_port

        self._refuse_running()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only place, a file in the way: was a traceback
            raise ConfigError(
                f"cannot create the demo's data dir {self.data_dir}: {exc.strerror or exc}; "
                "expected a directory (--data-dir) the demo may create and write"
            ) from None
        out_path, log_path = self.data_dir / "up.out", self.data_dir / "up.log"
        # the scenarios are the seed's: the stack the demo starts runs the seed policy, on
        # un-prefixed topics, whatever this shell's BATON_* variables say
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("BATON_POLICY", "BATON_TOPIC_PREFIX", "BATON_BOOTSTRAP")
        }
        args = [
            sys.executable,
            "-m",
            "baton.cli",
            "up",
            "--data-dir",
            str(self.data_dir),
            "--sql-port",
            str(free_port()),
        ]
        kwargs: dict[str, Any] = {}
        if self.keep:
            kwargs["start_new_session"] = True  # outlives the demo (and its terminal's Ctrl-C)
        elif sys.platform.startswith("linux"):
            from baton.streams.embedded import kill_when_parent_dies

            kwargs["preexec_fn"] = kill_when_parent_dies
        with open(out_path, "wb") as out, open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                args, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=log, **kwargs
            )
        deadline = time.monotonic() + timeout
        while True:
            match = _READY.search(out_path.read_text(errors="replace"))
            if match:
                self.bootstrap, self.sql_url = match["bootstrap"], match["sql"]
                return
            code = self.proc.poll()
            if code is not None or time.monotonic() > deadline:
                self.stop()
                what = (
                    f"exited with code {code}"
                    if code is not None
                    else f"was not ready after {timeout:g} s"
                )
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
                raise BatonError(f"`baton up` {what}; its log ({log_path}):\n{tail}")
            time.sleep(0.1)

    def _refuse_running(self) -> None:
        """A ``baton up`` already runs with this data dir (a second `baton demo --keep` in
        the folder): say how to use it, before anything is started or written. Its own
        refusal came after the demo had emptied that stack's up.out and up.log, with exit 1
        (the code of a decision that differed) and "stop it with: kill PID" naming the pid
        of the `baton up` that had just refused to start."""
        found = live_stack(self.data_dir)
        if found is not None:
            raise ConfigError(
                f"a `baton up` already runs with the data dir {self.data_dir} ({found[0]}): "
                f"play the demo against it with `{found[1]}`, stop it first "
                f"(kill {found[2]}), or give the demo another --data-dir"
            )

    def decision_keys(self) -> str | None:
        """The public key its workers sign decisions with, from its stack.json (None: none
        recorded)."""
        from baton.cli.stack_file import read_record

        record = read_record(self.data_dir)
        return None if record is None else record.decision_keys

    @property
    def running(self) -> bool:
        """It started, was ready, and still runs."""
        return bool(self.bootstrap) and self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
