"""``baton up``'s ports, refused before anything starts: one taken, or one given twice."""

from __future__ import annotations

from baton.schemas.errors import ConfigError

__all__ = ["refuse_busy_ports", "refuse_shared_ports"]


def refuse_busy_ports(broker: int | None, sql: int | None, metrics: int | None) -> None:
    """Fail at once on a port another process holds or one given to two servers (``sql``
    None: no SQL endpoint)."""
    _refuse_busy_sql_port(sql)
    _refuse_busy_metrics_port(metrics)
    refuse_shared_ports(broker, sql, metrics)


def _refuse_busy_sql_port(port: int | None) -> None:
    """Fail at once when the SQL endpoint's port is taken, instead of after the sink's
    restarts (a second `baton up`, or a ClickHouse server, on 8123 is the usual case)."""
    import socket

    if not port:  # off, or 0: any free port
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the endpoint binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve SQL on 127.0.0.1:{port}: {exc.strerror or exc} "
                "(another baton up, or a ClickHouse server?); pass --sql-port 0 (any free "
                "port) or --sql-port off (env BATON_SQL_PORT)"
            ) from None


def _refuse_busy_metrics_port(port: int | None) -> None:
    """The worker's /metrics port, checked as the SQL endpoint's: taken, the worker exited
    on it at every restart and `baton up` gave up only after ~35 s of them."""
    try:
        _refuse_busy_sql_port(port)
    except ConfigError:
        raise ConfigError(
            f"cannot serve the worker's /metrics on 127.0.0.1:{port}: the port is taken; pass "
            "--metrics-port 0 (any free port) or --metrics-port off (env BATON_METRICS_PORT)"
        ) from None


def refuse_shared_ports(broker: int | None, sql: int | None, metrics: int | None) -> None:
    """One port given to two of the stack's servers (0 or None: a free one, none): both
    probes above pass, since nothing holds it yet; then the loser exited at every restart
    and `baton up` gave up after ~40 s of them."""
    given = [("--port", broker), ("--sql-port", sql), ("--metrics-port", metrics)]
    for i, (first, a) in enumerate(given):
        for second, b in given[i + 1 :]:
            if a and a == b:
                raise ConfigError(
                    f"{first} and {second} are both {a}: the servers of one stack need a port "
                    "each; give another, or 0 for a free one"
                )
