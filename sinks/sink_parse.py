"""The sink's parse processes: records parsed, checked and encoded as Native blocks outside the
consumer's process, whose one interpreter lock bounded the sink.

Why: one sink process spent ~9 us a row of Python parsing and checking records and ~4 us
encoding the Native block, and its consumer, parser and writer threads share one GIL: the
sink stored ~36-38k rows/s on two cores with one of them mostly idle. A parse process takes
a chunk of records (partition, offset, bytes), makes their rows with the very code the sink
runs in-process (``AuditBatch.add``: the same shortcut, checks, rejections and errors),
encodes them (``audit_insert.native_block``) and returns the block with what the batch's
dedup token is made of. The sink's process keeps the consumer, the offsets and chDB: chDB
opens a data directory in one process only, so exactly one process writes it, however many
parse.

Guarantees: a chunk's rows, rejected records and token are those ``AuditBatch.add`` gives for
the same records (``tests/unit/test_audit_sink_parse.py``); results come back in the order
the chunks went out. Not guaranteed: that a chunk comes back at all - a parse process that
dies fails its pending chunks, one that does not answer within 60 s is killed, and the sink
parses those records itself (``AuditBatch`` materialises them), then parses in-process from
there on. A parse process reads only what its parent writes to its stdin and exits when
that closes (its parent died or stopped). Chunks and results cross the pipes as pickles: a
helper is trusted as the sink is (the same code on the same records: a record that could
take over one could have taken over the other), and no other process holds those pipes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from baton.sinks.audit_batch import AuditBatch, token_material
from baton.sinks.audit_controls import Control
from baton.sinks.audit_copies import Copy
from baton.sinks.audit_insert import native_block
from baton.sinks.json_columns import encoded_chunk
from baton.sinks.json_rows import shortcut_row
from baton.sinks.rows import DECISION_COLUMNS, DecidedWindow, forged

__all__ = ["ChunkFuture", "ParseProcesses", "ParsedChunk", "parse_chunk"]

log = logging.getLogger("baton.sinks.sink")

#: (partition, offset, value) as the consumer read it
Record = tuple[int, int, bytes | None]
_LENGTH = struct.Struct("<Q")


@dataclass(slots=True)
class ParsedChunk:
    """What a parse process returns for one chunk of records."""

    #: the rows' Native block (``audit_insert.native_block``); None: the driver refused a value
    native: bytes | None
    rows: int
    #: the rows' part of the batch's dedup token (``audit_batch.token_material``)
    material: bytes
    #: partition -> (first, last) offset of the rows (not of the rejected records)
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)
    rejected: list[list[Any]] = field(default_factory=list)
    #: records flagged reemitted (``AuditBatch.copies``), looked up after the rows are stored
    copies: list[Copy] = field(default_factory=list)
    #: where the block's columns start (``json_columns``; None: the row path's block), so the
    #: batch's blocks go to ClickHouse as one (``audit_insert.one_native_block``)
    marks: tuple[int, ...] | None = None
    #: control decisions (``AuditBatch.controls``), stored after the rows unless held
    controls: list[Control] = field(default_factory=list)


def parse_chunk(
    topic: str,
    window: DecidedWindow | None,
    types: tuple[str, ...],
    records: list[Record],
    mac_keys: tuple[bytes, ...] = (),
) -> ParsedChunk:
    """The rows of ``records`` as ``AuditBatch.add`` makes them, encoded with ``types``.

    A record in the worker's shape is its ``shortcut_row`` straight away (what ``add`` does
    first, without the batch's bookkeeping: the offsets are the sink's, the raw bytes only a
    rejected record needs); any other takes ``add``, which rejects or keeps it as the sink
    would. With ``mac_keys``, a record without the workers' audit MAC is rejected first, as
    ``add`` rejects it."""
    if mac_keys:
        refused, kept = AuditBatch(topic), []
        for partition, offset, value in records:
            if (why := forged(value, mac_keys)) is None:
                kept.append((partition, offset, value))
            else:
                refused.reject(partition, offset, *why)
        if refused.rejected:
            chunk = parse_chunk(topic, window, types, kept)
            chunk.rejected = refused.rejected + chunk.rejected
            return chunk
    try:
        encoded = encoded_chunk(topic, window, types, records)
    except Exception:  # whatever went wrong there, the row path decides
        encoded = None
    if encoded is not None:
        native, count, spans, material, rejected, copies, marks, controls = encoded
        return ParsedChunk(native, count, material, spans, rejected, copies, marks, controls)
    batch = AuditBatch(topic)
    batch.window = window  # the sink's batch fixed it at its first record
    rows = batch.rows
    for partition, offset, value in records:
        row = None if value is None else shortcut_row(value, topic, partition, offset, window)
        if row is None:
            batch.add(partition, offset, value)
        else:
            rows.append(row)
    spans, material = token_material(batch.rows)
    native = native_block(batch.rows, DECISION_COLUMNS, types)
    return ParsedChunk(
        native, len(batch.rows), material, spans, batch.rejected, batch.copies, None, batch.controls
    )


class ChunkFuture(Future[ParsedChunk]):
    """A chunk's result to come from one parse process; ``abandon`` when it is overdue."""

    def __init__(self, child: _ParseProcess) -> None:
        super().__init__()
        self._child = child

    def abandon(self) -> None:
        """Not come back in time: its process is hung, so it is killed (its pending chunks
        fail, and the sink parses in-process from then on). Done already: nothing."""
        if not self.done():
            self._child.kill()


class ParseProcesses:
    """``count`` parse processes fed in turn; ``submit`` returns the chunk's future.

    No I/O in the constructor: ``start`` launches the processes (``python -m`` this module,
    the parent's environment), ``close`` ends them.
    """

    def __init__(self, count: int, topic: str) -> None:
        self.count = count
        self.topic = topic
        self._children: list[_ParseProcess] = []
        self._turn = 0

    def start(self) -> None:
        for i in range(self.count):  # one by one: close() ends those started before a failure
            self._children.append(_ParseProcess(self.topic, i))

    @property
    def alive(self) -> bool:
        """Whether every parse process still answers (one dead: the sink parses itself)."""
        return bool(self._children) and all(child.alive for child in self._children)

    def pids(self) -> list[int]:
        return [child.process.pid for child in self._children]

    def submit(
        self,
        window: DecidedWindow | None,
        types: tuple[str, ...],
        records: list[Record],
        mac_keys: tuple[bytes, ...] = (),
    ) -> ChunkFuture:
        child = self._children[self._turn % len(self._children)]
        self._turn += 1
        return child.submit(window, types, records, mac_keys)

    def close(self) -> None:
        for child in self._children:
            child.close()
        self._children = []


class _ParseProcess:
    """One parse process, with a thread that writes its chunks and one that reads its results."""

    def __init__(self, topic: str, index: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "baton.sinks.sink_parse", topic],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=dict(os.environ),
        )
        for pipe in (self.process.stdin, self.process.stdout):
            _widen(pipe)
        self.alive = True
        self._closing = False
        self._pending: deque[ChunkFuture] = deque()
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        name = f"audit-parse-{index}"
        self._threads = [
            threading.Thread(target=self._send, name=f"{name}-send", daemon=True),
            threading.Thread(target=self._receive, name=f"{name}-receive", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self,
        window: DecidedWindow | None,
        types: tuple[str, ...],
        records: list[Record],
        mac_keys: tuple[bytes, ...],
    ) -> ChunkFuture:
        future = ChunkFuture(self)
        with self._lock:
            if not self.alive:
                future.set_exception(RuntimeError("the parse process has exited"))
                return future
            self._pending.append(future)
        self._outbox.put(pickle.dumps((window, types, records, mac_keys), protocol=5))
        return future

    def _send(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            while (message := self._outbox.get()) is not None:
                _write_message(stdin, message)
        except (OSError, ValueError):  # the process is gone: _receive fails what is pending
            pass
        finally:
            with contextlib.suppress(OSError, ValueError):
                stdin.close()

    def _receive(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        error = "the parse process has exited"
        try:
            hello = _read_message(stdout)
            if hello is not None and pickle.loads(hello) != _same_code():
                hello, error = None, f"the parse process runs other code: {pickle.loads(hello)}"
            while hello is not None and (message := _read_message(stdout)) is not None:
                outcome = pickle.loads(message)
                with self._lock:
                    future = self._pending.popleft()
                if isinstance(outcome, ParsedChunk):
                    future.set_result(outcome)
                else:
                    future.set_exception(RuntimeError(f"the parse process failed: {outcome}"))
        except Exception as exc:  # a broken pipe or message: the sink parses itself
            error = f"the parse process's answer was unreadable: {exc!r}"
        with self._lock:
            self.alive = False
            pending, self._pending = list(self._pending), deque()
        for future in pending:
            future.set_exception(RuntimeError(error))
        if not self._closing or pending:
            log.warning("audit sink: %s; the sink parses its records itself", error)

    def kill(self) -> None:
        log.warning("audit sink: a parse process did not answer in time; killed")
        with contextlib.suppress(OSError):
            self.process.kill()

    def close(self) -> None:
        self._closing = True
        self._outbox.put(None)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for thread in self._threads:
            thread.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


#: a pipe's buffer, asked for: a chunk of 1,000 records is ~1.1 MB, which Linux's default
#: 64 KiB pipe passed in 17 writes, each waiting for the other side to read
_PIPE_BYTES = 1 << 20


def _widen(pipe: Any) -> None:
    """Ask for a bigger buffer on ``pipe`` (Linux; elsewhere, or refused: as it is)."""
    import fcntl

    setter = getattr(fcntl, "F_SETPIPE_SZ", None)
    if pipe is None or setter is None:
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe.fileno(), setter, _PIPE_BYTES)


def _write_message(stream: BinaryIO, message: bytes) -> None:
    stream.write(_LENGTH.pack(len(message)))
    stream.write(message)
    stream.flush()


def _read_message(stream: BinaryIO) -> bytes | None:
    """One length-prefixed message, or None at the end of the stream."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        return None
    return body


def serve(topic: str, inbox: BinaryIO, outbox: BinaryIO) -> None:
    """A parse process's loop: a chunk in, its ParsedChunk (or the error's text) out, until
    the inbox closes."""
    gc.set_threshold(50_000, 20, 100)  # as run_sink: a chunk is thousands of young objects
    _warm_up()
    gc.freeze()  # the imported modules' objects: never scanned again by a full collection
    _write_message(outbox, pickle.dumps(_same_code(), protocol=5))
    while (message := _read_message(inbox)) is not None:
        window, types, records, mac_keys = pickle.loads(message)
        outcome: ParsedChunk | str
        try:
            outcome = parse_chunk(topic, window, types, records, mac_keys)
        except Exception as exc:  # one chunk's failure: the sink parses it itself
            outcome = f"{type(exc).__name__}: {exc}"[:2000]
        _write_message(outbox, pickle.dumps(outcome, protocol=5))


def _same_code() -> tuple[str, str]:
    """Where this process's parse code comes from: a parse process must run the sink's own
    (another checkout on its path would parse, check and reject by other rules)."""
    import baton.sinks.json_rows as json_rows

    return (os.path.realpath(__file__), os.path.realpath(json_rows.__file__))


def _warm_up() -> None:
    """Import now what the first chunk would wait for (measured: the first 5,000 rows took
    0.54 s in the parse process, 0.1 s later ones): the driver's encoder, pandas (which
    clickhouse-connect imports at its first block), the Decision model's validator."""
    from clickhouse_connect.driver.insert import InsertContext  # noqa: F401
    from clickhouse_connect.driver.transform import NativeTransform  # noqa: F401

    from baton.sinks.audit_insert import load_insert_imports

    load_insert_imports()
    AuditBatch("warm-up").add(0, 0, b"{}")  # the general path's first validation


def _main() -> None:
    """``python -m baton.sinks.sink_parse TOPIC``: chunks on stdin, results on stdout. File
    descriptor 1 is pointed at stderr first, so a library's stray print cannot corrupt the
    results."""
    outbox = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        serve(sys.argv[1], sys.stdin.buffer, outbox)
    except (BrokenPipeError, KeyboardInterrupt):  # the sink is gone (killed), or Ctrl-C
        # reached its process group: nobody to answer, nothing to say (its traceback reached
        # `baton up`'s terminal at every sink crash, and sink.log at every Ctrl-C: s. 34)
        os._exit(0)


if __name__ == "__main__":
    # through the package, so what is pickled names baton.sinks.sink_parse, not __main__
    from baton.sinks.sink_parse import _main as main

    main()
