"""The ``BATON_*`` variables Baton reads besides its Settings fields and click's automatic ones.

Three sources make the variables Baton reads (docs/deploy.md "Configuration"): the fields of
``schemas.settings.Settings`` (and the SDK's ``ClientSettings``), the click options
(``envvar=`` and click's automatic ``BATON_<COMMAND>_<OPTION>``), and the names below. Every
direct ``os.environ`` read of a ``BATON_*`` name, every option's ``envvar=`` and every
variable only the build or the test suite reads is named here, once: ``cli/env_check.py``
warns about a set ``BATON_*`` variable that is in none of them, and
tests/unit/test_env_check.py finds each ``BATON_*`` name of the source tree in one of them.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "BUILD_AND_TESTS",
    "DATA_DIR",
    "METRICS_URL",
    "OPTION_VARIABLES",
    "READ_DIRECTLY",
    "REGISTERED",
    "REPLAY_TIMELINE",
    "RESTART_BACKOFF_S",
    "RESTART_LIMIT",
    "RESTART_WINDOW_S",
    "SQL_PORT",
    "WARNED",
]

#: the data dir of `baton up`, and the stack the client commands find (cli/stack_record.py)
DATA_DIR: Final = "BATON_DATA_DIR"
#: a file each process of `baton replay` appends its timeline to (processors/replay_pool.py)
REPLAY_TIMELINE: Final = "BATON_REPLAY_TIMELINE"
#: the variables a process's parent already warned about (cli/env_check.py): `baton up`'s
#: children and the demo's `baton up` inherit the environment, and say nothing twice
WARNED: Final = "BATON_WARNED_VARIABLES"

#: `baton up`'s options that name their variable (``envvar=``), and `baton top`'s
SQL_PORT: Final = "BATON_SQL_PORT"
RESTART_LIMIT: Final = "BATON_RESTART_LIMIT"
RESTART_WINDOW_S: Final = "BATON_RESTART_WINDOW_S"
RESTART_BACKOFF_S: Final = "BATON_RESTART_BACKOFF_S"
METRICS_URL: Final = "BATON_METRICS_URL"

#: read by ``os.environ`` where they are used, not through Settings
READ_DIRECTLY: Final = frozenset({DATA_DIR, REPLAY_TIMELINE, WARNED})
#: the ``envvar=`` of click options (the command tree's own list, cheap to check against:
#: tests/unit/test_env_check.py walks the tree and finds each here); BATON_DATA_DIR and
#: BATON_METRICS_PORT are also read elsewhere (stack_record, Settings)
OPTION_VARIABLES: Final = frozenset(
    {DATA_DIR, SQL_PORT, RESTART_LIMIT, RESTART_WINDOW_S, RESTART_BACKOFF_S, METRICS_URL}
)
#: read by the build (setup.py: compile the replay core with mypyc) and by the test suite
#: (tests/): a shell that builds Baton or runs its tests may hold them when it runs `baton`
BUILD_AND_TESTS: Final = frozenset(
    {
        "BATON_COMPILE",
        "BATON_COMPILED_ALL",
        "BATON_FAST_EXAMPLES",
        "BATON_TEST_SLOW_RUN",
        "BATON_TEST_SLOW_S",
        "BATON_TEST_RELEASE",
    }
)
#: every name above: known without importing anything
REGISTERED: Final = READ_DIRECTLY | OPTION_VARIABLES | BUILD_AND_TESTS
