"""Which key a command checks the decisions' hash chains with (``processors/chain``).

``BATON_AUDIT_CHAIN_KEY`` when set (the workers'); else the ``chain.key`` of the `baton up`
stack whose audit or Kafka the command reads (``processors/control_seal``: made with a fresh
audit, so a default stack's chains are keyed and a row forged onto a run's end is named,
session 44); else none (b""), which the commands say. The stack is the one --data-dir names,
else the one a ``chdb://DATA_DIR/chdb`` audit lies in, else the running one whose SQL endpoint
an ``http`` DSN names (the stack found as every command finds it: ``BATON_DATA_DIR``, else
``./.baton``; a stopped stack's port may serve another's audit now: h44 F3), or, for Kafka,
the one the command takes its Kafka from (``stack_record.uses_stack``). A key file there that
does not read is a ConfigError: one another user put beside a copy of an audit is that user's
to forge with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["audit_chain_key", "audit_worker_dir", "stack_chain_key", "stack_mac_keys"]


def audit_chain_key(settings: Any, dsn: str, data_dir: Path | None = None) -> bytes:
    """The key `baton audit verify` and `baton replay` check the chains of the audit at
    ``dsn`` with (b"": none); ``data_dir``: the command's --data-dir."""
    from baton.processors.control_seal import workers_chain_key

    return workers_chain_key(settings, audit_worker_dir(dsn, data_dir))


def audit_worker_dir(dsn: str, data_dir: Path | None = None) -> Path | None:
    """The workers' data dir (its chain.key and seal.key) of the `baton up` stack whose audit
    ``dsn`` is (see the module docstring; ``data_dir``: the command's --data-dir), or None."""
    from baton.cli.up_children import WORKER_DATA_DIR
    from baton.sinks.clickhouse import parse_dsn

    target = parse_dsn(dsn)
    if data_dir is not None:  # (ignored, every real row was named altered: h44 F3)
        return data_dir / WORKER_DATA_DIR
    if target.chdb_path is not None:
        return target.chdb_path.parent / WORKER_DATA_DIR
    if target.kind == "http":
        data_dir = _stack_serving(dsn)
        return None if data_dir is None else data_dir / WORKER_DATA_DIR
    return None


def stack_chain_key(settings: Any, bootstrap: str | None, data_dir: Path | None) -> bytes:
    """The key a replay of Kafka's gov.decisions checks chains with: that of the `baton up`
    stack whose Kafka it reads (--data-dir, or neither --bootstrap nor BATON_BOOTSTRAP)."""
    from baton.processors.control_seal import workers_chain_key

    return workers_chain_key(settings, _stack_worker_dir(bootstrap, data_dir))


def stack_mac_keys(
    settings: Any, bootstrap: str | None, data_dir: Path | None
) -> tuple[bytes, ...]:
    """The workers' audit MAC keys (``schemas/record_mac``) a replay of Kafka's gov.decisions
    uses no record without, as the sink stores none: BATON_AUDIT_CHAIN_KEY and the seal.key of
    the stack whose Kafka it reads, those there are."""
    from baton.processors.control_seal import seal_keys

    return tuple(seal_keys(settings, _stack_worker_dir(bootstrap, data_dir)))


def _stack_worker_dir(bootstrap: str | None, data_dir: Path | None) -> Path | None:
    from baton.cli.stack_record import find_stack, uses_stack
    from baton.cli.up_children import WORKER_DATA_DIR

    if uses_stack("bootstrap", {"bootstrap": bootstrap}, data_dir):
        return find_stack(data_dir).data_dir / WORKER_DATA_DIR
    return None


def _stack_serving(dsn: str) -> Path | None:
    """The data dir of the stack found here whose SQL endpoint ``dsn`` names (host and port
    alike), or None."""
    from baton.cli.stack_record import find_stack
    from baton.schemas.errors import ConfigError

    try:
        found = find_stack(None)
    except ConfigError:  # no record to read: no stack's key
        return None
    record = found.record
    if record is None or not record.sql_url or not record.live(found.data_dir):
        return None
    where = _where(dsn)
    return found.data_dir if where is not None and where == _where(record.sql_url) else None


#: the names of this host's loopback address (the endpoint listens on 127.0.0.1)
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def _where(url: str) -> tuple[str | None, int | None] | None:
    try:
        parts = urlsplit(url)
        host = "127.0.0.1" if parts.hostname in _LOOPBACK else parts.hostname
        return host, parts.port
    except ValueError:  # a port that is no number
        return None
