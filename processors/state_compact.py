"""How a run's state is held small in memory: containers shared by the runs that hold them.

Every empty container of every state is one frozen ``EMPTY``; small dicts equal runs hold
(the same agents, often the same task ids) are one frozen copy found by content
(``shared``); a request digest the engine made is held as its 8 bytes (``compact_digest``),
and a run's few newest dedup keys with their digests as one flat tuple (``fresh_added``).
None of it changes a record's bytes or a decision: the wire form and the engine see plain
dicts and the digests' text. Not guaranteed: that a run shares anything (a run whose names
are its own holds its own copies).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final, NoReturn

__all__ = [
    "EMPTY",
    "FRESH_TUPLE_MAX",
    "SHARED_MAX_ITEMS",
    "OneTask",
    "compact_digest",
    "digest_hex",
    "fresh_added",
    "fresh_digest",
    "fresh_digest_list",
    "fresh_of",
    "fresh_thawed",
    "shared",
]


class _Frozen(dict[Any, Any]):
    """A container many states hold: any change raises instead of reaching all of them.

    Each changing method is written out (one function under seven names was a multiple
    assignment in a class body, which mypyc does not compile); each takes any arguments and
    raises the refusal, as the one function did."""

    __slots__ = ()

    def _refusal(self) -> str:
        return "a shared RunState container is held by many runs: replace it"

    def __setitem__(self, key: Any, value: Any) -> NoReturn:
        raise TypeError(self._refusal())

    def __delitem__(self, key: Any) -> NoReturn:
        raise TypeError(self._refusal())

    def update(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(self._refusal())

    def setdefault(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(self._refusal())

    def pop(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(self._refusal())

    def popitem(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(self._refusal())

    def clear(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(self._refusal())

    def __ior__(self, other: Any) -> NoReturn:  # type: ignore[misc]
        raise TypeError(self._refusal())


class _FrozenEmpty(_Frozen):
    """The one empty container every state shares (an empty dict is 64 bytes, and a run has
    up to nine of them)."""

    __slots__ = ()

    def _refusal(self) -> str:
        return "RunState.EMPTY is shared by every state: replace it, never change it"


#: the empty value of every container field (``fresh`` included): shared, never changed
EMPTY: Final[dict[Any, Any]] = _FrozenEmpty()


class _Shared(_Frozen):
    """A small container that equal runs share (the same agents, the same new tasks)."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and copy rebuild it through dict's constructor (not __setitem__)
        return (_Shared, (dict(self),))


#: shared containers by content (their items, in order); cleared when full, like the
#: partitioner's cache: the runs keep the copies they hold, so a clear costs one more copy
#: of each common container, and hostile names cannot grow it
_SHARED: Final[dict[tuple[Any, ...], Any]] = {}  # (a _Shared, or a OneTask)
_SHARED_MAX: Final = 4096
#: only containers this small are shared (a key tuple of at most this many items)
SHARED_MAX_ITEMS: Final = 8


def shared(container: Any, nodes: bool = False) -> Any:
    """The copy of a small ``container`` that every run with the same items (in the same
    order) holds (a dict, or a OneTask: Any, so compiled callers check nothing): a run's
    agents dict is ~200 bytes, and most runs of one orchestrator name
    the same agents (and often the same task ids). EMPTY, a shared one and a large one are
    returned as they are. Containers are replaced, never changed in place (RunState), so
    sharing them changes nothing a run can see. ``nodes``: a task dict, whose new copy also
    holds the task nodes equal runs hold (``_with_shared_nodes``)."""
    if type(container) is not dict or len(container) > SHARED_MAX_ITEMS:
        return container
    if nodes and not _text_ids_and_parents(container):
        return container
    key = tuple(container.items())  # (twice as fast as one flat tuple of them)
    try:
        hit = _SHARED.get(key)
    except TypeError:  # a value no dict can key (a record's odd task parent): its own
        return container
    if hit is None:
        if nodes:
            container = _with_shared_nodes(container)
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        hit = _SHARED[key] = _one_task(container) or _Shared(container)
    return hit


def _text_ids_and_parents(tasks: dict[Any, Any]) -> bool:
    """True when every task id is text and every node's parent text or None (as the engine
    makes them): a record's may be a number, and ``1 == 1.0 == True`` would give one run's
    value to another run whose record wrote the other one (its record's bytes changed by
    another record; tests/unit/test_attacks_session8.py)."""
    for task, node in tasks.items():
        parent = node[2]
        if type(task) is not str or (parent is not None and type(parent) is not str):
            return False
    return True


def _one_task(tasks: dict[Any, Any]) -> OneTask | None:
    """``tasks`` as a OneTask when it holds one task whose id is text, else None."""
    if len(tasks) == 1:
        for task, node in tasks.items():
            if type(task) is str:
                return OneTask(task, node)
    return None


class OneTask(Mapping[str, Any]):
    """A task dict of one task, as a run holds it once written: 48 bytes where a dict of one
    is 192 (a run whose task ids are its own, a fresh uuid a task, holds its own; runs naming
    the same task share one, as ``shared`` finds it). Read like that dict (``get``, ``in``,
    iteration, ``items``, equal to it); nothing changes it: RunState replaces its task
    dicts (``as_dict`` for the new one)."""

    __slots__ = ("node", "task")

    def __init__(self, task: str, node: Any) -> None:
        self.task = task
        self.node = node

    def get(self, key: Any, default: Any = None) -> Any:  # the engine's lookup
        return self.node if key is self.task or key == self.task else default

    def __getitem__(self, key: Any) -> Any:
        if key is self.task or key == self.task:
            return self.node
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key is self.task or key == self.task

    def __iter__(self) -> Iterator[str]:
        return iter((self.task,))

    def __len__(self) -> int:
        return 1

    def items(self) -> tuple[tuple[str, Any]]:  # type: ignore[override]
        return ((self.task, self.node),)

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and copy rebuild it from its task and node (compiled, it has no slots that
        # copyreg's default could read)
        return (OneTask, (self.task, self.node))

    def as_dict(self) -> dict[str, Any]:
        """The dict it stands for (a new one, to build the run's next task dict from)."""
        return {self.task: self.node}

    def __repr__(self) -> str:
        return f"OneTask({self.task!r}: {self.node!r})"


def _with_shared_nodes(tasks: dict[Any, Any]) -> dict[Any, Any]:
    """``tasks`` with the nodes (owner, giver, parent, depth) other runs hold: task ids are
    often a run's own (a fresh uuid a task), their nodes rarely are (~80 bytes a task). Every
    parent is text or None (``shared`` shares no other dict: ``1 == 1.0 == True`` would put
    one run's value into another run's record); names are text and depths ints wherever a
    node is made (the engine; state_wire refuses other ones)."""
    cache = _NODES
    if len(cache) >= _SHARED_MAX:
        cache.clear()
    # inline: a Python call a node cost the batch step ~2k instructions (callgrind)
    return {k: cache.setdefault(n, n) for k, n in tasks.items()}


#: task nodes by content, bounded like _SHARED
_NODES: Final[dict[Any, Any]] = {}


_from_hex: Final = bytes.fromhex


def compact_digest(digest: Any) -> Any:
    """A request digest as ``fresh`` holds it: the engine's 16 lowercase hex digits as their
    8 bytes, anything else (None, a record's odd value) as it is; ``digest_hex`` gives it back."""
    if type(digest) is str and len(digest) == 16:
        last = _LAST_DIGEST
        if digest is last[0]:  # the digest just made bytes (replay's two decides of a step)
            return last[1]
        try:
            raw = _from_hex(digest)
        except ValueError:
            return digest
        if raw.hex() == digest:  # fromhex also takes capitals and spaces
            last[0], last[1] = digest, raw
            return raw
    return digest


#: the newest digest compact_digest made bytes, and those bytes: a replay step decided under
#: the new policy too remembers the very digest the proof's remembered (dedup_keys keeps it)
_LAST_DIGEST: Final[list[Any]] = [None, None]


def digest_hex(digest: Any) -> Any:
    """The digest ``compact_digest`` was given."""
    return digest.hex() if type(digest) is bytes else digest


# ---------------------------------------------------------------- RunState.fresh

_DIGEST: Final = 8  # bytes of a digest compact_digest made
#: a written run's fresh keys are one flat tuple up to this many: every key ``fresh`` holds
#: (state.FRESH_LIMIT - 1; a record's more, from a writer of the changelog, a dict). A state
#: the engine makes keeps its dict until written (replay, what-if never write): tuples as
#: the engine makes them cost the pure decide +4.1 % instructions (callgrind, engine_bench's
#: runs of 10 to 26 events), a tuple turned back into a dict at its seventh key cost a long
#: run's next event +5.8 %, and at every run's next key the batch step ~+2.5 %
FRESH_TUPLE_MAX: Final = 31


def fresh_added(fresh: Any, key: Any, digest: Any) -> Any:
    """``fresh`` (EMPTY, a tuple made here or a dict) with ``key`` and its digest (as
    ``compact_digest`` holds it) added: ``(key, ..., key, digests)`` while it holds at most
    FRESH_TUPLE_MAX keys, the digests one bytes of 8 a key while every one is the engine's,
    else a tuple of them as they are (None, a record's odd text); past that a dict. A dict of
    two keys and their digests took 280 bytes, the tuple 128. The keys are the tuple's first
    items, so ``key in fresh`` is C's scan of them and of the digests, never text while they
    are bytes (a record's odd text keeps them a tuple, which no key equals)."""
    if type(fresh) is not tuple:
        if not fresh:
            return (key, digest) if type(digest) is bytes else (key, (digest,))
        return {**fresh, key: digest}
    if len(fresh) > FRESH_TUPLE_MAX:
        return {**fresh_thawed(fresh), key: digest}
    digests = fresh[-1]
    if type(digests) is bytes:
        if type(digest) is bytes:
            return fresh[:-1] + (key, digests + digest)  # noqa: RUF005 (no list built)
        digests = _split(digests)
    return fresh[:-1] + (key, (*digests, digest))  # noqa: RUF005


def fresh_of(marks: dict[Any, Any]) -> Any:
    """``fresh`` holding ``marks`` (key -> digest as ``compact_digest`` holds it), in order,
    as a written or read state holds it."""
    if len(marks) > FRESH_TUPLE_MAX:
        return marks
    fresh: Any = EMPTY
    for key, digest in marks.items():
        fresh = fresh_added(fresh, key, digest)
    return fresh


def fresh_thawed(fresh: Any) -> dict[Any, Any]:
    """The keys and digests of a tuple ``fresh`` as a dict."""
    return dict(zip(fresh[:-1], _split(fresh[-1]), strict=True))


def fresh_digest(fresh: Any, key: Any) -> Any:
    """The digest of ``key`` (one of ``fresh``'s), as the engine made it (its hex text)."""
    if type(fresh) is not tuple:
        return digest_hex(fresh[key])
    i = fresh.index(key)
    digests = fresh[-1]
    if type(digests) is bytes:
        return digests[_DIGEST * i : _DIGEST * (i + 1)].hex()
    return digest_hex(digests[i])


def fresh_digest_list(fresh: Any) -> list[Any]:
    """The digests of ``fresh``'s keys, in their order, as the engine made them."""
    if type(fresh) is not tuple:
        # (inline, not digest_hex per digest: a call each costs more than the conversion)
        return [d.hex() if type(d) is bytes else d for d in fresh.values()]
    digests = fresh[-1]
    if type(digests) is bytes:
        return [digests[i : i + _DIGEST].hex() for i in range(0, len(digests), _DIGEST)]
    return [digest_hex(d) for d in digests]


def _split(digests: Any) -> Any:
    """A tuple fresh's digests one each (a tuple of them stays as it is)."""
    if type(digests) is not bytes:
        return digests
    return tuple([digests[i : i + _DIGEST] for i in range(0, len(digests), _DIGEST)])
