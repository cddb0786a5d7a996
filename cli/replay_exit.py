"""How `baton replay` ends: its exit code from the report, once the report is written.

0: nothing changes; 1: something does; 7 (``ReplayFailed``): replay cannot answer (the
recorded policies did not reproduce a run, a run is broken, nothing in scope, or the report
could not be written). When the command is the whole process, it ends with ``os._exit``
after flushing (the teardown of a large report cost a visible share of the replay).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

import click

from baton.cli.wording import counted
from baton.processors.chain_links import shown_id
from baton.processors.replay import ReplayReport
from baton.schemas.errors import ReplayFailed

__all__ = ["_exit", "_unwritten"]


def _unwritten(exc: OSError) -> None:
    """The report could not be written (a full disk, a closed pipe): no answer was given,
    so not 0 or 1 but ReplayFailed's exit 7, one line on stderr, no traceback."""
    message = (
        f"the report could not be written to stdout ({exc.strerror or exc}): replay gave no answer"
    )
    if _whole_process():
        # (what stdout still buffers would fail again at the interpreter's exit: exit 120)
        with contextlib.suppress(OSError, ValueError):
            click.echo(f"baton: error: {message}", err=True)
            sys.stderr.flush()
        os._exit(ReplayFailed.exit_code)
    raise ReplayFailed(message) from None


def _exit(report: ReplayReport) -> None:
    unfaithful = report.unfaithful_runs
    if unfaithful:
        raise ReplayFailed(
            f"replay under the recorded policies did not reproduce {len(unfaithful)} runs "
            f"(first: {shown_id(unfaithful[0].run_id)}, shown above): its answer cannot be "
            "trusted; "
            "is the chain key "
            "(BATON_AUDIT_CHAIN_KEY, or the `baton up` stack's worker/chain.key, found from "
            "its folder) the workers'?"
        )
    if report.broken:
        raise ReplayFailed(
            f"{counted(len(report.broken), 'run', commas=False)} "
            f"{'is' if len(report.broken) == 1 else 'are'} broken or cannot be decided (first: "
            f"{shown_id(report.broken[0])}, listed above as partial with why): rows were "
            "deleted, inserted or altered in the audit (with --from-kafka: records of "
            "gov.decisions; or recorded before replay can decide them: no input, a policy "
            "record expired; with --redecide, records stamped so that when or in which order "
            "a worker read them is unknown), so its answer cannot "
            "be trusted; check `baton audit verify`, or narrow --since to history replay can "
            "decide"
        )
    if not report.runs and report.partial:
        raise ReplayFailed(
            f"none of the {len(report.partial)} runs in scope could be replayed from its "
            "start (listed above); widen --since, or record inputs first (audit migration 0005)"
        )
    if not report.runs:
        # an empty scope proves nothing: a policy gate with a wrong --since, --run or DSN
        # must not pass as "nothing changes"
        raise ReplayFailed(
            "no recorded run in scope (check --since/--from/--to, --run, --tenant and the "
            "audit the command reads): nothing was replayed, so nothing is proven"
        )
    _leave(1 if report.changed_runs else 0)


def _leave(code: int) -> None:
    """Exit with ``code``. When this command is the whole process (``baton replay``), its
    output flushed, the process ends here (``os._exit``): the interpreter's teardown freed
    the report (64k runs: ~0.1-0.25 s of CPU), the engine's modules and chDB's engine one by
    one while the pool sat idle, after the answer was written. The audit was only read and
    its client is closed; the pool is shut down. A caller in the same process (tests,
    CliRunner) gets ``SystemExit`` as before."""
    if _whole_process():
        try:
            for stream in (sys.stdout, sys.stderr):
                if stream is not None:  # (closed: `>&-`, `2>&-`)
                    stream.flush()
        except (OSError, ValueError):
            sys.exit(code)  # (a closed pipe: the interpreter's own exit says so, as before)
        os._exit(code)
    sys.exit(code)


def _whole_process() -> bool:
    """This command runs as the process's own (``baton replay ...`` read from its argv, in
    its main thread, writing to its own stdout and stderr), not in a caller's process."""
    first = next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None)
    return (
        first == "replay"
        and sys.stdout is sys.__stdout__
        and sys.stderr is sys.__stderr__
        and threading.current_thread() is threading.main_thread()
    )
