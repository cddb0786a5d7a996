"""Kill switches a `baton up` restart could not issue again, held by its workers from their start.

The embedded broker forgets gov.control when it stops; a restart issues again every kill the
audit recorded the command of (cli.restore_kills). A kill whose command is lost (its row
replaced in ``FINAL`` by a forged release, or altered so the fresh workers refuse it) used to
hold only the runs the audit held: a brand-new run of a killed tenant was allowed until an
operator re-issued the kill (fail open, session 36). The restart now writes those switches to
``held-kills.json`` in the workers' data directory (a local file only ``baton up`` writes,
never a topic any client can write to), and a worker starts with them engaged, each dated at
the restart: only a command applied after it changes one (with ``operators`` in the policy,
a release signed after the restart; a replayed older one is refused as a replay).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path

from baton.processors.engine import NO_KILLS, KillSwitches
from baton.schemas.errors import ConfigError
from baton.schemas.files import FileProblem, read_small_text, write_data_file

__all__ = [
    "HELD_KILLS_FILE",
    "clear_held_kills",
    "held_from_restart",
    "read_held_kills",
    "write_held_kills",
]

log = logging.getLogger("baton.worker")

#: in the workers' data directory (``BATON_WORKER_DATA_DIR``; ``baton up``: DATA_DIR/worker)
HELD_KILLS_FILE = "held-kills.json"
#: the file's bound: ~100k switches of 256-character targets. More (a forger of kill rows by
#: the 100k) are written as one global switch; a larger file, written by hand, the worker
#: refuses by name rather than read without end
MAX_BYTES = 32 * 1024 * 1024
_SCOPES = ("run", "tenant", "global")
#: a target no event can carry is not held (schemas.events.Id: run ids and tenants <= 256)
_MAX_TARGET = 256


def write_held_kills(
    worker_dir: Path,
    scopes: Iterable[tuple[str, str]],
    held_at: float,
    say: Callable[[str], None] | None = None,
) -> int:
    """Write the ``(scope, target)`` switches (target ``*`` for global) a restart at
    ``held_at`` (POSIX seconds) could not issue again, for the workers of ``worker_dir`` to
    hold; none: the file is removed. How many were written. More than ``MAX_BYTES`` hold are
    written as one global switch, said to ``say`` with how many and the first of them."""
    held = sorted({(s, "*" if s == "global" else t) for s, t in scopes if _holdable(s, t)})
    if not held:
        clear_held_kills(worker_dir)
        return 0

    def text_of(pairs: list[tuple[str, str]]) -> str:
        return json.dumps({"held_at": held_at, "scopes": [list(pair) for pair in pairs]})

    text = text_of(held)
    if len(text) > MAX_BYTES:  # more than a worker reads (forged kill rows by the 100k)
        if say is not None:
            from baton.processors.chain_links import shown_id  # a forged row's target

            first = ", ".join(f"{scope} {shown_id(target)}" for scope, target in held[:3])
            say(
                f"restore: WARNING: {len(held):,} kill switches to hold ({first}, ...) are more "
                "than a worker reads: they are held as ONE global switch, every run stopped (a "
                "release of it lifts them all: re-issue the kills you want kept first)"
            )
        held = [("global", "*")]  # every run stopped rather than a worker that cannot start
        text = text_of(held)
    worker_dir.mkdir(parents=True, exist_ok=True)
    path = worker_dir / HELD_KILLS_FILE
    write_data_file(path, text, 0o600, "the kill switches the workers must hold to")
    return len(held)


def clear_held_kills(worker_dir: Path) -> None:
    """Remove the file of held switches (a start without a restore holds none)."""
    path = worker_dir / HELD_KILLS_FILE
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(
            f"cannot remove {path} (kill switches an earlier restart held): "
            f"{exc.strerror or exc}; remove it by hand"
        ) from None


def read_held_kills(worker_dir: Path) -> KillSwitches:
    """The switches the file in ``worker_dir`` holds, each dated at its restart (NO_KILLS
    when there is no file). ``ConfigError`` naming the file and what is wrong when it does
    not read as :func:`write_held_kills` writes it: a worker that cannot tell which
    switches to hold does not start (fail closed)."""
    path = worker_dir / HELD_KILLS_FILE
    try:
        text = read_small_text(path, MAX_BYTES)
    except FileNotFoundError:
        return NO_KILLS
    except FileProblem as exc:
        raise ConfigError(f"{path} (kill switches to hold) {exc}") from None
    try:
        doc = json.loads(text)
        at, scopes = doc["held_at"], doc["scopes"]
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigError(
            f"{path} (kill switches to hold): not the file baton up writes ({exc!r}); "
            'expected {"held_at": SECONDS, "scopes": [[SCOPE, TARGET], ...]}'
        ) from None
    if type(at) not in (int, float) or not math.isfinite(at) or at < 0:
        raise ConfigError(f"{path}: held_at must be a finite time in seconds, got {at!r}")
    if not isinstance(scopes, list):
        raise ConfigError(f"{path}: scopes must be a list, got {type(scopes).__name__}")
    runs: list[str] = []
    tenants: list[str] = []
    everything = False
    for n, pair in enumerate(scopes):
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(part, str) for part in pair)
            and _holdable(*pair)
        ):
            raise ConfigError(
                f"{path}: scopes[{n}] must be [run|tenant|global, TARGET] with a target of "
                f"1-{_MAX_TARGET} characters, got {str(pair)[:80]!r}"
            )
        scope, target = pair
        if scope == "run":
            runs.append(target)
        elif scope == "tenant":
            tenants.append(target)
        else:
            everything = True
    slots = [f"run:{r}" for r in runs] + [f"tenant:{t}" for t in tenants]
    latest = dict.fromkeys(slots + (["global:*"] if everything else []), float(at))
    return KillSwitches(runs, tenants, everything, latest)


def held_from_restart(worker_dir: Path) -> KillSwitches:
    """:func:`read_held_kills`, said in the worker's log when it holds any."""
    kills = read_held_kills(worker_dir)
    if kills:
        log.warning(
            "holding %s from the start: a baton up restart could not issue their commands "
            "again (%s); lift one with a release signed after the restart "
            "(`baton kill ... --release`)",
            kills,
            worker_dir / HELD_KILLS_FILE,
        )
    return kills


def _holdable(scope: str, target: str) -> bool:
    """A switch an event can be under: a known scope, a target an event can carry."""
    return scope == "global" or (scope in _SCOPES and 1 <= len(target) <= _MAX_TARGET)
