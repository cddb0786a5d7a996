"""What orchestrators see while a worker restarts: SDK check() latency and fail-closed answers
during a rolling restart of one of two workers (docs/deploy.md, "Rolling restarts").

    python -m bench.rolling_restart_bench [--rate 20] [--timeout 15] [--session-timeout 10]

Starts Tansu and two `baton worker` processes, then one GovernanceClient calls check() for a
new run every 1/rate s from several threads; after 5 s worker 1 gets SIGTERM, and once it
has exited it is started again (its partitions come back to it after the second rebalance).
Prints the latency of the checks before, during and after, and how many were answered
`governance_unavailable` (the client's timeout passed).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from baton.processors.probe import wait_until_deciding
from baton.schemas.events import HandoffRequested
from baton.streams.embedded import EmbeddedBroker
from baton.streams.net import free_port
from baton.streams.sdk import GovernanceClient
from baton.streams.topics import TopicCatalog, ensure_topics

PARTITIONS = 4


def start_worker(
    bootstrap: str, workdir: Path, name: str, session_timeout: float
) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BATON_")},
        "BATON_BOOTSTRAP": bootstrap,
        "BATON_PARTITIONS": str(PARTITIONS),
        "BATON_SESSION_TIMEOUT_S": str(session_timeout),
        "BATON_WORKER_DATA_DIR": str(workdir / f"data-{name}"),
        "BATON_WEB_PORT": str(free_port()),
    }
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps its copy
    return subprocess.Popen(
        [sys.executable, "-m", "baton.cli", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20.0, help="checks per second")
    parser.add_argument("--timeout", type=float, default=15.0, help="the SDK's timeout, s")
    parser.add_argument("--retries", type=int, default=0, help="the SDK's retries")
    parser.add_argument("--session-timeout", type=float, default=10.0, help="workers', s")
    parser.add_argument("--after", type=float, default=25.0, help="seconds after the restart")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="baton-rolling-"))
    broker = EmbeddedBroker(log_dir=workdir).start()
    workers = []
    try:
        catalog = TopicCatalog(partitions=PARTITIONS)
        ensure_topics({"bootstrap.servers": broker.bootstrap}, catalog)
        workers = [
            start_worker(broker.bootstrap, workdir, f"w{i}", args.session_timeout) for i in (1, 2)
        ]
        conf = {"bootstrap.servers": broker.bootstrap}
        wait_until_deciding(conf, catalog.requests, catalog.decisions, PARTITIONS, 90)
        time.sleep(args.session_timeout)  # the second worker's join settles
        results: list[tuple[float, float, str]] = []  # (started, seconds, reason)
        lock, stop = threading.Lock(), threading.Event()
        client = GovernanceClient(
            broker.bootstrap, partitions=PARTITIONS, timeout=args.timeout, retries=args.retries
        )
        client.connect()

        def caller(offset: float) -> None:
            time.sleep(offset)
            while not stop.is_set():
                run = f"r_{uuid.uuid4().hex[:10]}"
                started = time.monotonic()
                decision = client.check(
                    HandoffRequested(
                        request_id=f"{run}-1",
                        run_id=run,
                        task_id="t",
                        from_agent="planner",
                        to_agent="researcher",
                        event_time=datetime.now(UTC),
                    )
                )
                with lock:
                    results.append((started, time.monotonic() - started, str(decision.reason)))
                time.sleep(max(0.0, 8 / args.rate - (time.monotonic() - started)))

        threads = [
            threading.Thread(target=caller, args=(i / args.rate,), daemon=True) for i in range(8)
        ]
        for t in threads:
            t.start()
        time.sleep(5)
        t_stop = time.monotonic()
        workers[0].send_signal(signal.SIGTERM)
        workers[0].wait(60)
        t_exited = time.monotonic()
        workers[0] = start_worker(broker.bootstrap, workdir, "w1b", args.session_timeout)
        time.sleep(args.after)
        stop.set()
        for t in threads:
            t.join(args.timeout * (args.retries + 1) + 5)
        client.close()
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
                w.wait(30)
        broker.stop()

    def summary(label: str, rows: list[tuple[float, float, str]]) -> None:
        if not rows:
            print(f"{label:<28} no checks")
            return
        lat = sorted(r[1] for r in rows)
        unavailable = sum(1 for r in rows if r[2] == "governance_unavailable")
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        print(
            f"{label:<28} {len(rows):>5} checks  p50 {statistics.median(lat) * 1000:7.0f} ms  "
            f"p99 {p99 * 1000:7.0f} ms  max {lat[-1] * 1000:7.0f} ms  "
            f"governance_unavailable {unavailable}"
        )

    print(
        f"SIGTERM at +5.0 s; worker exited {t_exited - t_stop:.1f} s later; restarted at once "
        f"(session timeout {args.session_timeout:g} s, SDK timeout {args.timeout:g} s, "
        f"retries {args.retries})"
    )
    summary("before the restart", [r for r in results if r[0] < t_stop])
    summary("from SIGTERM to +30 s", [r for r in results if t_stop <= r[0] < t_stop + 30])
    summary("after", [r for r in results if r[0] >= t_stop + 30])
    slow = [(r[0] - t_stop, r[1], r[2]) for r in results if r[1] > 1]
    if slow:
        print("checks over 1 s (started at, took, reason), seconds from SIGTERM:")
        for at, took, reason in sorted(slow):
            print(f"  {at:+6.1f}  {took:5.1f}  {reason}")


if __name__ == "__main__":
    main()
